"""Drawing primitives of the synthetic renderer: paints, vehicle profiles and the ``Pen``.

The pen draws in vehicle units (fractions of the vehicle's length or width, v upwards) onto a
supersampled PIL canvas and records the pixel box of every element drawn for a part.
"""
from __future__ import annotations

import math

from PIL import ImageDraw

SS = 2                     # supersampling: draw at 2x, then reduce (anti-aliased edges)
PAINT = {"white": (238, 238, 234), "black": (24, 24, 28), "silver": (160, 166, 176),
         "red": (205, 28, 32), "blue": (30, 80, 205), "green": (34, 140, 58),
         "yellow": (242, 202, 28), "gold": (214, 160, 30)}
TINT = {"clear": (188, 218, 238), "dark": (22, 24, 32), "blue": (48, 105, 220), "green": (56, 168, 110)}
LIGHT = {"white": (255, 255, 246), "yellow": (255, 214, 30), "blue": (70, 170, 255), "red": (240, 36, 36)}
TYRE, HUB, RACK, LINE = (34, 34, 36), (60, 60, 64), (96, 96, 104), (20, 20, 22)

# Side profiles, in units of the vehicle length L, v measured upwards from the ground, u from the
# front: wheel radius, wheel positions, clearance, top of the lower body, cabin extent, cabin top,
# front/rear cabin slant, window count; optional door region (u0, u1, v0, v1) and cargo box.
SIDE_PROFILES = {
    "sedan": dict(r=.100, wu=(.19, .80), clr=.06, base=.26, cab=(.22, .80), top=.47, sf=.13, sr=.11, nwin=2),
    "coupe": dict(r=.100, wu=(.19, .80), clr=.05, base=.24, cab=(.25, .77), top=.43, sf=.16, sr=.14, nwin=2),
    "hatchback": dict(r=.105, wu=(.18, .80), clr=.06, base=.27, cab=(.24, .97), top=.50, sf=.14, sr=.05, nwin=2),
    "suv": dict(r=.120, wu=(.19, .80), clr=.09, base=.33, cab=(.20, .98), top=.58, sf=.10, sr=.02, nwin=3),
    "pickup": dict(r=.120, wu=(.18, .81), clr=.09, base=.32, cab=(.21, .57), top=.56, sf=.09, sr=.0, nwin=2),
    "van": dict(r=.100, wu=(.16, .83), clr=.06, base=.34, cab=(.03, 1.0), top=.66, sf=.13, sr=.0, nwin=3),
    "bus": dict(r=.090, wu=(.15, .84), clr=.05, base=.33, cab=(.01, .99), top=.68, sf=.02, sr=.0, nwin=5),
    "truck": dict(r=.100, wu=(.15, .82), clr=.07, base=.27, cab=(.0, .31), top=.64, sf=.04, sr=.0, nwin=1,
                  door=(.04, .27, .28, .45), cargo=(.33, 1.0, .68)),
}
# Front/rear profiles in units of the body width W (u in [-0.5, 0.5]): clearance, top of the lower
# body, cabin top and cabin top width.
END_PROFILES = {
    "sedan": dict(clr=.10, base=.42, top=.72, topw=.74), "coupe": dict(clr=.09, base=.38, top=.64, topw=.70),
    "hatchback": dict(clr=.10, base=.43, top=.76, topw=.76), "suv": dict(clr=.14, base=.52, top=.88, topw=.82),
    "pickup": dict(clr=.15, base=.53, top=.88, topw=.82), "van": dict(clr=.10, base=.50, top=.98, topw=.86),
    "bus": dict(clr=.08, base=.48, top=1.10, topw=.96), "truck": dict(clr=.12, base=.50, top=1.05, topw=.92),
}


def shade(rgb, f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * f))) for c in rgb)


def outline_colour(rgb) -> tuple[int, int, int]:
    """A contrasting edge colour: dark on light paint, lighter on dark paint."""
    return shade(rgb, 0.45) if sum(rgb) > 180 else (110, 110, 118)


class Pen:
    """Draws in vehicle units and records each part element's pixel box.

    A point (u, v) goes to ``(x0 + sx * u, ground - s * v)`` (v up; ``sx = -s`` mirrors the
    drawing), then is rotated by ``angle`` degrees (counter-clockwise) about ``centre``. Rotating
    the geometry instead of the raster keeps edges sharp and costs nothing.
    """

    def __init__(self, draw: ImageDraw.ImageDraw, x0: float, ground: float, s: float, sx: float,
                 centre: tuple[float, float] = (0.0, 0.0), angle: float = 0.0):
        self.d, self.x0, self.ground, self.s, self.sx = draw, x0, ground, s, sx
        self.cx, self.cy = centre
        t = math.radians(angle)
        self.cos, self.sin = math.cos(t), math.sin(t)
        self.w = SS                                  # outline width: 1 output pixel
        self.elements: dict[str, list[tuple[float, float, float, float]]] = {}

    def pt(self, u: float, v: float) -> tuple[float, float]:
        dx, dy = self.x0 + self.sx * u - self.cx, self.ground - self.s * v - self.cy
        return (self.cx + dx * self.cos + dy * self.sin, self.cy - dx * self.sin + dy * self.cos)

    def _record(self, part: str | None, pts: list[tuple[float, float]]) -> None:
        if part:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            self.elements.setdefault(part, []).append((min(xs), min(ys), max(xs), max(ys)))

    def poly(self, uv, fill, part=None, outline=None) -> None:
        pts = [self.pt(u, v) for u, v in uv]
        self.d.polygon(pts, fill=fill)
        # a closed wide line is twice as fast as PIL's wide polygon outline (temporary mask)
        self.d.line(pts + pts[:1], fill=outline or outline_colour(fill), width=self.w)
        self._record(part, pts)

    def rect(self, u0, v0, u1, v1, fill, part=None, outline=None, radius=0.0) -> None:
        u0, u1 = min(u0, u1), max(u0, u1)
        v0, v1 = min(v0, v1), max(v0, v1)
        r = min(radius, (u1 - u0) / 2, (v1 - v0) / 2)
        if r * self.s <= 0.5:
            uv = [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]
        else:  # rounded corners as short arcs
            uv = []
            for cu, cv, a0 in ((u1 - r, v0 + r, -90), (u1 - r, v1 - r, 0), (u0 + r, v1 - r, 90),
                               (u0 + r, v0 + r, 180)):
                uv += [(cu + r * math.cos(math.radians(a0 + 18 * i)),
                        cv + r * math.sin(math.radians(a0 + 18 * i))) for i in range(6)]
        self.poly(uv, fill, part=part, outline=outline)

    def disc(self, u, v, r, fill, part=None, outline=None, width=None) -> None:
        cx, cy = self.pt(u, v)
        rr = r * self.s
        box = (cx - rr, cy - rr, cx + rr, cy + rr)
        self.d.ellipse(box, fill=fill, outline=outline, width=width or self.w)
        self._record(part, [box[:2], box[2:]])

    def line(self, u0, v0, u1, v1, fill, width: float) -> None:
        self.d.line([self.pt(u0, v0), self.pt(u1, v1)], fill=fill, width=max(1, round(width * self.s)))

    def star(self, u, v, r, fill) -> None:
        uv = [(u + (r if i % 2 == 0 else r * 0.45) * math.sin(i * math.pi / 5),
               v + (r if i % 2 == 0 else r * 0.45) * math.cos(i * math.pi / 5)) for i in range(10)]
        self.poly(uv, fill)


def split_quad(bl, br, tr, tl, n: int, gap: float):
    """Split the quad (u,v corners) into ``n`` side-by-side quads separated by ``gap``."""
    out = []
    for i in range(n):
        a, b = i / n, (i + 1) / n

        def lerp(p, q, t):
            return (p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t)
        ga = gap / 2 if i > 0 else 0.0
        gb = gap / 2 if i < n - 1 else 0.0
        lo0, lo1 = lerp(bl, br, a), lerp(bl, br, b)
        hi0, hi1 = lerp(tl, tr, a), lerp(tl, tr, b)
        out.append([(lo0[0] + ga, lo0[1]), (lo1[0] - gb, lo1[1]),
                    (hi1[0] - gb, hi1[1]), (hi0[0] + ga, hi0[1])])
    return out

