"""The vehicle drawings: side view (wheels, doors, windows, mirror, roof) and front / rear view.

Each function draws one identity's attributes with a :class:`~pfcvr.data.synthetic.pen.Pen`;
elements drawn with ``part=<category>`` become that part's region.
"""
from __future__ import annotations

import math

from pfcvr.data.synthetic.pen import (END_PROFILES, HUB, LIGHT, LINE, PAINT, RACK, SIDE_PROFILES,
                                      TINT, TYRE, Pen, outline_colour, shade, split_quad)
from pfcvr.data.synthetic.vocabulary import GLOBAL

def _draw_wheel(pen: Pen, u: float, r: float, style: str, colour) -> None:
    pen.disc(u, r, r, TYRE, part="wheels", outline=LINE)
    rim = 0.66 * r
    if style == "solid":
        pen.disc(u, r, rim, colour, outline=LINE)
    elif style == "ring":  # a rim-coloured ring around a large dark hub
        pen.disc(u, r, rim, colour, outline=LINE)
        pen.disc(u, r, 0.42 * r, HUB, outline=None)
    else:  # spoked: thin rim and four thick spokes
        pen.disc(u, r, rim, HUB, outline=colour, width=max(1, round(0.12 * r * pen.s)))
        for ang in (0.25 * math.pi, 0.75 * math.pi):
            du, dv = rim * math.cos(ang), rim * math.sin(ang)
            pen.line(u - du, r - dv, u + du, r + dv, colour, 0.17 * r)


def draw_side(pen: Pen, a: dict) -> None:
    """Identity ``a`` from the side, front at u = 0: body, cabin, roof, windows, doors, mirror,
    wheels (part elements: windows, doors, mirrors, roof, wheels)."""
    p = SIDE_PROFILES[a[GLOBAL]["type"]]
    body = PAINT[a[GLOBAL]["colour"]]
    r, clr, base, top = p["r"], p["clr"], p["base"], p["top"]
    c0, c1, sf, sr = p["cab"][0], p["cab"][1], p["sf"], p["sr"]
    pen.rect(0.0, clr, 1.0, base, body, radius=0.05)
    if "cargo" in p:
        g0, g1, gt = p["cargo"]
        pen.rect(g0, base - 0.02, g1, gt, shade(body, 0.9), radius=0.01)
    # cabin and two-tone roof band along its top
    pen.poly([(c0, base), (c1, base), (c1 - sr, top), (c0 + sf, top)], body)
    rt = 0.045
    k = rt / (top - base)
    roof = PAINT[a["roof"]["colour"]]
    pen.poly([(c0 + sf * (1 - k), top - rt), (c1 - sr * (1 - k), top - rt), (c1 - sr, top), (c0 + sf, top)],
             roof, part="roof")
    _draw_roof_kit(pen, a["roof"]["type"], c0 + sf, c1 - sr, top, roof)
    # windows: a glass strip in the cabin, split by pillars
    w = a["windows"]
    tint = TINT[w["tint"]]
    door = p.get("door")
    v0 = (door[3] if door else base) + 0.025
    v1 = top - rt - 0.018
    i0, i1 = c0 + sf + 0.02, c1 - sr - 0.025
    if w["shape"] == "slanted":  # parallelograms leaning back
        lean = 0.06
        quad = [(i0, v0), (i1 - lean, v0), (i1, v1), (i0 + lean, v1)]
    else:
        quad = [(i0, v0), (i1, v0), (i1, v1), (i0, v1)]
    for q in split_quad(*quad, n=p["nwin"], gap=0.03):
        if w["shape"] == "rounded":
            pen.rect(q[0][0], q[0][1], q[2][0], q[2][1], tint, part="windows", outline=LINE,
                     radius=0.45 * (v1 - v0))
        else:
            pen.poly(q, tint, part="windows", outline=LINE)
    # doors between the wheel arches (or on the cab), with panels, stripe and decal
    d = a["doors"]
    if door is None:
        du0 = max(c0 + 0.02, p["wu"][0] + r + 0.02)
        du1 = min(c1 - 0.02, p["wu"][1] - r - 0.02)
        door = (du0, du1, clr + 0.03, base - 0.006)
    du0, du1, dv0, dv1 = door
    accent = PAINT.get(d["colour"], LINE)
    pen.rect(du0, dv0, du1, dv1, body, part="doors", outline=LINE)
    if d["stripe"] != "none":
        mid = dv0 + 0.45 * (dv1 - dv0)
        bands = [(mid - 0.02, mid + 0.02)] if d["stripe"] == "single" else \
            [(mid - 0.045, mid - 0.015), (mid + 0.015, mid + 0.045)]
        for b0, b1 in bands:
            pen.rect(du0, b0, du1, b1, accent)
    panels = 1 if d["count"] == "two" else 2
    for i in range(panels):
        pu0 = du0 + (du1 - du0) * i / panels
        pu1 = du0 + (du1 - du0) * (i + 1) / panels
        if i > 0:
            pen.line(pu0, dv0, pu0, dv1, LINE, 0.012)
        pen.rect(pu1 - 0.05, dv1 - 0.04, pu1 - 0.02, dv1 - 0.055, LINE)  # handle
    if d["decal"] != "none":
        cu, cv, rr = (du0 + du1) / 2, dv0 + 0.45 * (dv1 - dv0), min(0.055, 0.42 * (dv1 - dv0))
        if d["decal"] == "star":
            pen.star(cu, cv, rr * 1.15, accent)
        else:
            pen.disc(cu, cv, rr, accent, outline=outline_colour(accent))
    # mirror at the base of the A-pillar, sticking out forward
    mu = c0 + 0.35 * sf
    mirror = PAINT[a["mirrors"]["colour"]]
    pen.poly([(mu - 0.095, base + 0.02), (mu, base + 0.02), (mu, base + 0.075), (mu - 0.085, base + 0.07)],
             mirror, part="mirrors", outline=LINE)
    # wheel arches then wheels
    for wu in p["wu"]:
        pen.disc(wu, r, 1.12 * r, shade(body, 0.35), outline=None)
        _draw_wheel(pen, wu, r, a["wheels"]["style"], PAINT[a["wheels"]["colour"]])


def _draw_roof_kit(pen: Pen, kind: str, u0: float, u1: float, top: float, roof) -> None:
    """Rack, ladder or sunroof on a roof spanning u0..u1 at height ``top`` (part: roof)."""
    if kind == "rack":
        for u in (u0 + 0.05, u1 - 0.05):
            pen.rect(u - 0.012, top, u + 0.012, top + 0.04, RACK, part="roof", outline=LINE)
        pen.rect(u0 + 0.02, top + 0.035, u1 - 0.02, top + 0.06, RACK, part="roof", outline=LINE)
    elif kind == "ladder":
        pen.rect(u0 + 0.02, top + 0.012, u1 - 0.02, top + 0.03, RACK, part="roof", outline=LINE)
        pen.rect(u0 + 0.02, top + 0.055, u1 - 0.02, top + 0.073, RACK, part="roof", outline=LINE)
        n = max(3, int((u1 - u0) / 0.06))
        for i in range(n + 1):
            u = u0 + 0.03 + (u1 - u0 - 0.06) * i / n
            pen.rect(u - 0.008, top, u + 0.008, top + 0.073, RACK, part="roof", outline=None)
    elif kind == "sunroof":
        w = min(0.22, 0.45 * (u1 - u0))
        cu = (u0 + u1) / 2
        pen.poly([(cu - w / 2, top - 0.01), (cu + w / 2, top - 0.01), (cu + w / 2 - 0.03, top + 0.035),
                  (cu - w / 2 + 0.02, top + 0.035)], TINT["dark"], part="roof", outline=(150, 170, 200))


def draw_end(pen: Pen, a: dict, rear: bool) -> None:
    """Identity ``a`` from the front (or the ``rear``), centred on u = 0: body, roof, windshield
    or rear window, lights, grille or plate, mirrors (parts: windows, lights, mirrors, roof)."""
    p = END_PROFILES[a[GLOBAL]["type"]]
    body = PAINT[a[GLOBAL]["colour"]]
    clr, base, top, topw = p["clr"], p["base"], p["top"], p["topw"]
    for s in (-1, 1):  # tyres peeking out below the body
        pen.rect(s * 0.33, 0.0, s * 0.47, clr + 0.08, TYRE, outline=LINE)
    pen.rect(-0.5, clr, 0.5, base, body, radius=0.06)
    pen.rect(-0.5, clr, 0.5, clr + 0.05, shade(body, 0.55))               # bumper
    bw = 0.46
    pen.poly([(-bw, base), (bw, base), (topw / 2, top), (-topw / 2, top)], body)
    rt = 0.06
    k = rt / (top - base)
    hw = topw / 2 + (bw - topw / 2) * k
    roof = PAINT[a["roof"]["colour"]]
    pen.poly([(-hw, top - rt), (hw, top - rt), (topw / 2, top), (-topw / 2, top)], roof, part="roof")
    _draw_roof_kit(pen, a["roof"]["type"], -topw / 2, topw / 2, top, roof)
    # windshield / rear window
    w = a["windows"]
    tint = TINT[w["tint"]]
    v0, v1 = base + 0.03, top - rt - 0.025
    if rear:
        v0 = v0 + 0.25 * (v1 - v0)
    wb = bw - 0.06 - (bw - topw / 2) * (v0 - base) / (top - base)
    wt = bw - 0.06 - (bw - topw / 2) * (v1 - base) / (top - base)
    if w["shape"] == "square":
        pen.rect(-wt, v0, wt, v1, tint, part="windows", outline=LINE)
    elif w["shape"] == "rounded":
        pen.rect(-(wb + wt) / 2, v0, (wb + wt) / 2, v1, tint, part="windows", outline=LINE,
                 radius=0.4 * (v1 - v0))
    else:
        pen.poly([(-wb, v0), (wb, v0), (wt - 0.08, v1), (-wt + 0.08, v1)], tint, part="windows",
                 outline=LINE)
    # lights (headlights or tail lights) and grille / licence plate
    ls, lc = a["lights"]["shape"], LIGHT[a["lights"]["colour"]]
    lv = clr + 0.66 * (base - clr)
    for s in (-1, 1):
        cu = s * 0.31
        if ls == "round":
            pen.disc(cu, lv, 0.085, lc, part="lights", outline=LINE)
        elif ls == "square":
            pen.rect(cu - 0.095, lv - 0.065, cu + 0.095, lv + 0.065, lc, part="lights", outline=LINE)
        else:
            pen.rect(cu - 0.135, lv - 0.032, cu + 0.135, lv + 0.032, lc, part="lights", outline=LINE)
    if rear:
        pen.rect(-0.1, clr + 0.07, 0.1, clr + 0.15, (240, 240, 230), outline=LINE)
    else:
        pen.rect(-0.15, lv - 0.06, 0.15, lv + 0.05, (40, 40, 44), outline=LINE)
        for i in range(3):
            gv = lv - 0.035 + 0.03 * i
            pen.line(-0.13, gv, 0.13, gv, (90, 90, 96), 0.008)
    mirror = PAINT[a["mirrors"]["colour"]]
    for s in (-1, 1):
        pen.rect(s * 0.455, base + 0.02, s * 0.575, base + 0.1, mirror, part="mirrors", outline=LINE)

