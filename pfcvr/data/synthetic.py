"""The embedded part-annotated vehicle benchmark (``data.source: synthetic``).

A procedurally rendered stand-in for T2I-VeRW that needs no download and is built so that part
perception *decides* retrieval:

- identities come in families of ``family_size`` that share type and body colour and differ only in
  part attributes (windows, lights, wheels, mirrors, roof, doors); every two family members differ
  in at least two attributes visible from the side and two visible from the front/rear;
- each image is one camera view (side_left = front of the vehicle at the image's left,
  side_right, front, rear) that shows only some parts, with scale, position, small rotation,
  background clutter, illumination, blur, noise and partial occlusion;
- each image records the boxes (0..1, plus a 24x24 cell grid) of the parts visible in it, and
  witness-style captions that mention type + colour + a varying subset of the *visible* part
  attributes, with synonyms and occasional witness mistakes. ``caption_facts`` records what each
  caption states, so the parts stage can score its phrase assignment and the attribute oracle
  (pfcvr/data/oracle.py) can measure how much the parts matter.

Everything is deterministic from ``seed``: each identity and each image draws from its own
``numpy`` generator keyed by (seed, id, image), so the output is byte-identical whatever the number
of worker processes. Images are written as PNG without timestamps.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from pfcvr.config import PART_CATEGORIES

# ----------------------------------------------------------------------------------------------
# Vocabulary
# ----------------------------------------------------------------------------------------------
GLOBAL = "global"          # caption_facts category of the global attributes (type, colour)
TYPES = ("sedan", "coupe", "hatchback", "suv", "pickup", "van", "bus", "truck")
BODY_COLOURS = ("white", "black", "silver", "red", "blue", "green", "yellow")
# Part attributes: category -> attribute -> values. "none" marks an absent stripe/decal; the door
# accent colour is "none" exactly when the doors carry neither stripe nor decal.
PART_ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "windows": {"tint": ("clear", "dark", "blue", "green"), "shape": ("square", "rounded", "slanted")},
    "lights": {"shape": ("round", "square", "slim"), "colour": ("white", "yellow", "blue", "red")},
    "wheels": {"style": ("solid", "spoked", "ring"), "colour": ("silver", "gold", "white", "red")},
    "mirrors": {"colour": ("black", "white", "red", "blue")},
    "roof": {"type": ("plain", "rack", "sunroof", "ladder"), "colour": ("black", "white", "silver", "red")},
    "doors": {"count": ("two", "four"), "stripe": ("none", "single", "double"),
              "decal": ("none", "star", "circle"), "colour": ("none", "white", "black", "yellow", "red")},
}
VIEWS = ("side_left", "side_right", "front", "rear")
_SIDE_PARTS = ("windows", "wheels", "mirrors", "roof", "doors")
_END_PARTS = ("windows", "lights", "mirrors", "roof")
VISIBLE_PARTS = {"side_left": _SIDE_PARTS, "side_right": _SIDE_PARTS,
                 "front": _END_PARTS, "rear": _END_PARTS}
PART_GRID = 24             # cells per side of the part grids (the real datasets' 24x24 convention)
GRID_IF_BELOW = 0.8        # a region gets a grid when its elements cover < 80% of its box's cells
MIN_FAMILY_DIFF = 2        # attributes in which two family members differ, per view group
IMAGES_PER_WORKER = 400    # a worker process per this many images (fewer: one process is faster)

# ----------------------------------------------------------------------------------------------
# Identities and splits
# ----------------------------------------------------------------------------------------------


def _sample_parts(rng: np.random.Generator) -> dict[str, dict[str, str]]:
    parts = {cat: {a: str(rng.choice(vals)) for a, vals in attrs.items()}
             for cat, attrs in PART_ATTRIBUTES.items()}
    doors = parts["doors"]
    if doors["stripe"] == "none" and doors["decal"] == "none":
        doors["colour"] = "none"
    elif doors["colour"] == "none":
        doors["colour"] = str(rng.choice(PART_ATTRIBUTES["doors"]["colour"][1:]))
    return parts


def _n_differences(a: dict, b: dict, categories: Sequence[str]) -> int:
    return sum(a[c][k] != b[c][k] for c in categories for k in a[c])


def sample_identities(n_ids: int, family_size: int, rng: np.random.Generator) -> list[dict]:
    """Attributes of ``n_ids`` identities in families of ``family_size`` (the last may be smaller).

    Returns dicts ``{"family": int, "global": {"type", "colour"}, <category>: {attr: value}}``.
    Family members share type and colour; any two differ in >= MIN_FAMILY_DIFF part attributes
    visible from the side and as many visible from the front/rear, and no two identities of the
    whole set are identical.
    """
    out: list[dict] = []
    seen: set[tuple] = set()
    for family in range(math.ceil(n_ids / family_size)):
        glob = {"type": str(rng.choice(TYPES)), "colour": str(rng.choice(BODY_COLOURS))}
        members: list[dict] = []
        for _ in range(min(family_size, n_ids - family * family_size)):
            for _attempt in range(1000):
                parts = _sample_parts(rng)
                key = (glob["type"], glob["colour"],
                       tuple(v for c in PART_CATEGORIES for v in parts[c].values()))
                if key not in seen and all(
                        _n_differences(parts, m, _SIDE_PARTS) >= MIN_FAMILY_DIFF
                        and _n_differences(parts, m, _END_PARTS) >= MIN_FAMILY_DIFF
                        for m in members):
                    break
            else:  # cannot happen with the vocabulary above unless families are huge
                raise ValueError(f"data.synthetic.family_size={family_size}: cannot sample that many "
                                 "distinguishable family members")
            seen.add(key)
            members.append(parts)
            out.append({"family": family, GLOBAL: dict(glob), **parts})
    return out


def split_families(n_families: int, fractions: dict[str, float],
                   rng: np.random.Generator) -> list[str]:
    """Split name per family: whole families go to one split, so the test set keeps its confusers.

    ``fractions``: {"train", "val", "test"} summing to 1. Train and test get at least one family,
    val at least one when its fraction is positive and there are three families or more.
    """
    counts = {s: int(round(fractions[s] * n_families)) for s in ("val", "test")}
    if fractions["val"] > 0 and n_families >= 3:
        counts["val"] = max(counts["val"], 1)
    counts["test"] = max(counts["test"], 1)
    counts["train"] = n_families - counts["val"] - counts["test"]
    if counts["train"] < 1:
        raise ValueError(f"data.synthetic: {n_families} families are too few for the split "
                         f"{fractions} (need at least one train and one test family); raise n_ids "
                         "or lower family_size")
    names = ["train"] * counts["train"] + ["val"] * counts["val"] + ["test"] * counts["test"]
    return [names[i] for i in rng.permutation(n_families)]


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------
_TYPE_WORDS = {"sedan": ("sedan", "sedan car"), "coupe": ("coupe", "sports coupe"),
               "hatchback": ("hatchback",), "suv": ("SUV", "sport utility vehicle"),
               "pickup": ("pickup truck", "pickup"), "van": ("van", "minivan"),
               "bus": ("bus", "city bus"), "truck": ("truck", "lorry")}
_COLOUR_WORDS = {"silver": ("silver", "silver-grey")}
_WORDS: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("windows", "tint", "clear"): ("clear", "untinted"),
    ("windows", "tint", "dark"): ("dark tinted", "blacked-out", "dark"),
    ("windows", "tint", "blue"): ("blue tinted", "bluish"),
    ("windows", "tint", "green"): ("green tinted", "greenish"),
    ("windows", "shape", "square"): ("square", "boxy"),
    ("windows", "shape", "rounded"): ("rounded", "round-cornered"),
    ("windows", "shape", "slanted"): ("slanted", "sloped"),
    ("lights", "shape", "round"): ("round", "circular"),
    ("lights", "shape", "square"): ("square", "rectangular"),
    ("lights", "shape", "slim"): ("slim", "narrow"),
    ("wheels", "style", "solid"): ("solid", "solid disc"),
    ("wheels", "style", "spoked"): ("spoked", "four-spoke"),
    ("wheels", "style", "ring"): ("ring-style", "hollow ring"),
    ("wheels", "colour", "silver"): ("silver", "chrome"),
}
_NOUNS = {
    ("windows", "side"): ("windows", "side windows", "window glass"),
    ("windows", "front"): ("windshield", "front window", "windscreen"),
    ("windows", "rear"): ("rear window", "back window", "rear glass"),
    ("lights", "front"): ("headlights", "headlamps", "front lights", "lamps"),
    ("lights", "rear"): ("tail lights", "taillamps", "rear lights", "lamps"),
    ("wheels", "side"): ("wheels", "rims", "alloy wheels", "alloys"),
    ("mirrors", "any"): ("mirrors", "side mirrors", "wing mirrors"),
}


def _word(rng, cat: str, attr: str, value: str) -> str:
    options = _WORDS.get((cat, attr, value)) or _COLOUR_WORDS.get(value) or (value,)
    return str(options[rng.integers(len(options))])


def _pick(rng, options: Sequence[str]) -> str:
    return str(options[rng.integers(len(options))])


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _phrase(rng, cat: str, said: dict[str, str], view: str) -> str:
    """A noun phrase stating the attributes ``said`` ({attr: value}) of part ``cat``."""
    side = "side" if view.startswith("side") else view
    w = {a: _word(rng, cat, a, v) for a, v in said.items()}
    if cat == "windows":
        noun = _pick(rng, _NOUNS[("windows", side)])
        text = " ".join(x for x in (w.get("shape"), w.get("tint"), noun) if x)
        return text if noun.endswith("s") else f"{_article(text)} {text}"
    if cat == "lights":
        return " ".join(x for x in (w.get("shape"), w.get("colour"),
                                    _pick(rng, _NOUNS[("lights", side)])) if x)
    if cat == "wheels":
        return " ".join(x for x in (w.get("colour"), w.get("style"),
                                    _pick(rng, _NOUNS[("wheels", "side")])) if x)
    if cat == "mirrors":
        noun = _pick(rng, _NOUNS[("mirrors", "any")])
        return f"{w['colour']} {noun}" if rng.random() < 0.7 else f"{noun} painted {w['colour']}"
    if cat == "roof":
        kind, colour = said.get("type"), w.get("colour")
        if kind is None:
            return f"a {colour} {_pick(rng, ('roof', 'roof top'))}"
        if colour is None:
            return _pick(rng, {"plain": ("a plain roof", "a bare roof"),
                               "rack": ("a roof rack", "a rack on the roof"),
                               "sunroof": ("a sunroof", "a glass sunroof"),
                               "ladder": ("a roof ladder", "a ladder on the roof")}[kind])
        return {"plain": f"a plain {colour} roof", "rack": f"a {colour} roof with a rack",
                "sunroof": f"a {colour} roof with a sunroof",
                "ladder": f"a ladder on its {colour} roof"}[kind]
    # doors: count, stripe and decal; the accent colour rides on a stripe or decal
    colour = w.get("colour", "")
    bits = []
    if "stripe" in said:
        bits.append({"none": "no stripes on the doors",
                     "single": f"a {colour} stripe along the doors",
                     "double": f"double {colour} stripes on the doors"}[said["stripe"]])
    if "decal" in said:
        colour = "" if "stripe" in said and said["stripe"] != "none" else colour
        bits.append({"none": "no decals on the doors",
                     "star": f"a {colour} star decal on the door".replace("  ", " "),
                     "circle": f"a {colour} circle sticker on the doors".replace("  ", " ")}[said["decal"]])
    if "count" in said:
        count = f"{said['count']} doors"
        return count if not bits else f"{count} with " + " and ".join(
            b.replace(" on the doors", "").replace(" along the doors", "").replace(" on the door", "")
            for b in bits)
    return " and ".join(bits)


def _choose_said(rng, cat: str, truth: dict[str, str], error_rate: float) -> tuple[dict, dict]:
    """Which attributes of ``cat`` the witness states and with which values (some mistaken).

    Returns ({attr: stated value}, {attr: True if mistaken}).
    """
    attrs = PART_ATTRIBUTES[cat]
    if cat == "doors":
        pool = ["count", "stripe", "decal"]
    else:
        pool = list(attrs)
    k = 1 if len(pool) == 1 or rng.random() < 0.5 else 2
    chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False))]
    said, wrong = {}, {}
    for a in chosen:
        said[a], wrong[a] = _maybe_wrong(rng, attrs[a], truth[a], error_rate)
    if cat == "doors" and any(said.get(a, "none") != "none" for a in ("stripe", "decal")):
        if truth["colour"] != "none":
            said["colour"], wrong["colour"] = _maybe_wrong(rng, attrs["colour"][1:], truth["colour"],
                                                           error_rate)
        else:  # the witness invented a stripe/decal, so its colour is invented too
            said["colour"], wrong["colour"] = _pick(rng, attrs["colour"][1:]), True
    return said, wrong


def _maybe_wrong(rng, values: Sequence[str], truth: str, error_rate: float) -> tuple[str, bool]:
    if rng.random() < error_rate:
        others = [v for v in values if v != truth]
        return _pick(rng, others), True
    return truth, False


# Sentence frames: S/s = "a red sedan" (capitalised or not), L = all part phrases, F = the
# first one, R = the rest.
_FRAMES = (
    "{S} with {L}.",
    "I saw {s}. It had {L}.",
    "{S}, {L}.",
    "The vehicle was {s} with {F}. It also had {R}.",
    "{S} that has {L}.",
    "It was {s}; I noticed {L}.",
    "A witness saw {s} with {L}.",
)


def _join(items: list[str], rng) -> str:
    if len(items) == 1:
        return items[0]
    comma = "," if len(items) > 2 and rng.random() < 0.5 else ""
    return ", ".join(items[:-1]) + f"{comma} and {items[-1]}"


def describe(attrs: dict, view: str, rng: np.random.Generator, error_rate: float
             ) -> tuple[str, list[dict]]:
    """One witness caption of an image of identity ``attrs`` seen from ``view``.

    Mentions type and colour plus 2-4 of the parts visible in the view (1-2 attributes each).
    Returns (caption, facts); each fact is ``{category, attribute, value, phrase, mistake}`` with
    the *stated* value (``mistake`` marks a misremembered one) and the caption substring that
    states it. Global facts have category ``"global"``.
    """
    facts: list[dict] = []
    g_said = {a: _maybe_wrong(rng, TYPES if a == "type" else BODY_COLOURS, attrs[GLOBAL][a], error_rate)
              for a in ("type", "colour")}
    colour, tword = g_said["colour"][0], _pick(rng, _TYPE_WORDS[g_said["type"][0]])
    cword = _word(rng, GLOBAL, "colour", colour)
    subject = f"{cword} {tword}"
    for a in ("type", "colour"):
        facts.append({"category": GLOBAL, "attribute": a, "value": g_said[a][0], "phrase": subject,
                      "mistake": g_said[a][1]})
    visible = VISIBLE_PARTS[view]
    k = int(rng.integers(2, min(4, len(visible)) + 1))
    cats = [visible[i] for i in rng.choice(len(visible), size=k, replace=False)]
    phrases = []
    for cat in cats:
        said, wrong = _choose_said(rng, cat, attrs[cat], error_rate)
        phrase = _phrase(rng, cat, said, view)
        phrases.append(phrase)
        facts += [{"category": cat, "attribute": a, "value": v, "phrase": phrase, "mistake": wrong[a]}
                  for a, v in said.items()]
    template = _FRAMES[rng.integers(len(_FRAMES))]
    s = f"{_article(subject)} {subject}"
    text = template.format(S=s[0].upper() + s[1:], s=s, L=_join(phrases, rng), F=phrases[0],
                           R=_join(phrases[1:], rng))
    return text, facts


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------
SS = 2                     # supersampling: draw at 2x, then reduce (anti-aliased edges)
_PAINT = {"white": (238, 238, 234), "black": (24, 24, 28), "silver": (160, 166, 176),
          "red": (205, 28, 32), "blue": (30, 80, 205), "green": (34, 140, 58),
          "yellow": (242, 202, 28), "gold": (214, 160, 30)}
_TINT = {"clear": (188, 218, 238), "dark": (22, 24, 32), "blue": (48, 105, 220), "green": (56, 168, 110)}
_LIGHT = {"white": (255, 255, 246), "yellow": (255, 214, 30), "blue": (70, 170, 255), "red": (240, 36, 36)}
_TYRE, _HUB, _RACK, _LINE = (34, 34, 36), (60, 60, 64), (96, 96, 104), (20, 20, 22)

# Side profiles, in units of the vehicle length L, v measured upwards from the ground, u from the
# front: wheel radius, wheel positions, clearance, top of the lower body, cabin extent, cabin top,
# front/rear cabin slant, window count; optional door region (u0, u1, v0, v1) and cargo box.
_SIDE = {
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
_END = {
    "sedan": dict(clr=.10, base=.42, top=.72, topw=.74), "coupe": dict(clr=.09, base=.38, top=.64, topw=.70),
    "hatchback": dict(clr=.10, base=.43, top=.76, topw=.76), "suv": dict(clr=.14, base=.52, top=.88, topw=.82),
    "pickup": dict(clr=.15, base=.53, top=.88, topw=.82), "van": dict(clr=.10, base=.50, top=.98, topw=.86),
    "bus": dict(clr=.08, base=.48, top=1.10, topw=.96), "truck": dict(clr=.12, base=.50, top=1.05, topw=.92),
}


def _shade(rgb, f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, c * f))) for c in rgb)


def _outline(rgb) -> tuple[int, int, int]:
    """A contrasting edge colour: dark on light paint, lighter on dark paint."""
    return _shade(rgb, 0.45) if sum(rgb) > 180 else (110, 110, 118)


class _Pen:
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
        self.d.line(pts + pts[:1], fill=outline or _outline(fill), width=self.w)
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


def _split_quad(bl, br, tr, tl, n: int, gap: float):
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


def _draw_wheel(pen: _Pen, u: float, r: float, style: str, colour) -> None:
    pen.disc(u, r, r, _TYRE, part="wheels", outline=_LINE)
    rim = 0.66 * r
    if style == "solid":
        pen.disc(u, r, rim, colour, outline=_LINE)
    elif style == "ring":  # a rim-coloured ring around a large dark hub
        pen.disc(u, r, rim, colour, outline=_LINE)
        pen.disc(u, r, 0.42 * r, _HUB, outline=None)
    else:  # spoked: thin rim and four thick spokes
        pen.disc(u, r, rim, _HUB, outline=colour, width=max(1, round(0.12 * r * pen.s)))
        for ang in (0.25 * math.pi, 0.75 * math.pi):
            du, dv = rim * math.cos(ang), rim * math.sin(ang)
            pen.line(u - du, r - dv, u + du, r + dv, colour, 0.17 * r)


def _draw_side(pen: _Pen, a: dict) -> None:
    p = _SIDE[a[GLOBAL]["type"]]
    body = _PAINT[a[GLOBAL]["colour"]]
    r, clr, base, top = p["r"], p["clr"], p["base"], p["top"]
    c0, c1, sf, sr = p["cab"][0], p["cab"][1], p["sf"], p["sr"]
    pen.rect(0.0, clr, 1.0, base, body, radius=0.05)
    if "cargo" in p:
        g0, g1, gt = p["cargo"]
        pen.rect(g0, base - 0.02, g1, gt, _shade(body, 0.9), radius=0.01)
    # cabin and two-tone roof band along its top
    pen.poly([(c0, base), (c1, base), (c1 - sr, top), (c0 + sf, top)], body)
    rt = 0.045
    k = rt / (top - base)
    roof = _PAINT[a["roof"]["colour"]]
    pen.poly([(c0 + sf * (1 - k), top - rt), (c1 - sr * (1 - k), top - rt), (c1 - sr, top), (c0 + sf, top)],
             roof, part="roof")
    _draw_roof_kit(pen, a["roof"]["type"], c0 + sf, c1 - sr, top, roof)
    # windows: a glass strip in the cabin, split by pillars
    w = a["windows"]
    tint = _TINT[w["tint"]]
    door = p.get("door")
    v0 = (door[3] if door else base) + 0.025
    v1 = top - rt - 0.018
    i0, i1 = c0 + sf + 0.02, c1 - sr - 0.025
    if w["shape"] == "slanted":  # parallelograms leaning back
        lean = 0.06
        quad = [(i0, v0), (i1 - lean, v0), (i1, v1), (i0 + lean, v1)]
    else:
        quad = [(i0, v0), (i1, v0), (i1, v1), (i0, v1)]
    for q in _split_quad(*quad, n=p["nwin"], gap=0.03):
        if w["shape"] == "rounded":
            pen.rect(q[0][0], q[0][1], q[2][0], q[2][1], tint, part="windows", outline=_LINE,
                     radius=0.45 * (v1 - v0))
        else:
            pen.poly(q, tint, part="windows", outline=_LINE)
    # doors between the wheel arches (or on the cab), with panels, stripe and decal
    d = a["doors"]
    if door is None:
        du0 = max(c0 + 0.02, p["wu"][0] + r + 0.02)
        du1 = min(c1 - 0.02, p["wu"][1] - r - 0.02)
        door = (du0, du1, clr + 0.03, base - 0.006)
    du0, du1, dv0, dv1 = door
    accent = _PAINT.get(d["colour"], _LINE)
    pen.rect(du0, dv0, du1, dv1, body, part="doors", outline=_LINE)
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
            pen.line(pu0, dv0, pu0, dv1, _LINE, 0.012)
        pen.rect(pu1 - 0.05, dv1 - 0.04, pu1 - 0.02, dv1 - 0.055, _LINE)  # handle
    if d["decal"] != "none":
        cu, cv, rr = (du0 + du1) / 2, dv0 + 0.45 * (dv1 - dv0), min(0.055, 0.42 * (dv1 - dv0))
        if d["decal"] == "star":
            pen.star(cu, cv, rr * 1.15, accent)
        else:
            pen.disc(cu, cv, rr, accent, outline=_outline(accent))
    # mirror at the base of the A-pillar, sticking out forward
    mu = c0 + 0.35 * sf
    mirror = _PAINT[a["mirrors"]["colour"]]
    pen.poly([(mu - 0.095, base + 0.02), (mu, base + 0.02), (mu, base + 0.075), (mu - 0.085, base + 0.07)],
             mirror, part="mirrors", outline=_LINE)
    # wheel arches then wheels
    for wu in p["wu"]:
        pen.disc(wu, r, 1.12 * r, _shade(body, 0.35), outline=None)
        _draw_wheel(pen, wu, r, a["wheels"]["style"], _PAINT[a["wheels"]["colour"]])


def _draw_roof_kit(pen: _Pen, kind: str, u0: float, u1: float, top: float, roof) -> None:
    """Rack, ladder or sunroof on a roof spanning u0..u1 at height ``top`` (part: roof)."""
    if kind == "rack":
        for u in (u0 + 0.05, u1 - 0.05):
            pen.rect(u - 0.012, top, u + 0.012, top + 0.04, _RACK, part="roof", outline=_LINE)
        pen.rect(u0 + 0.02, top + 0.035, u1 - 0.02, top + 0.06, _RACK, part="roof", outline=_LINE)
    elif kind == "ladder":
        pen.rect(u0 + 0.02, top + 0.012, u1 - 0.02, top + 0.03, _RACK, part="roof", outline=_LINE)
        pen.rect(u0 + 0.02, top + 0.055, u1 - 0.02, top + 0.073, _RACK, part="roof", outline=_LINE)
        n = max(3, int((u1 - u0) / 0.06))
        for i in range(n + 1):
            u = u0 + 0.03 + (u1 - u0 - 0.06) * i / n
            pen.rect(u - 0.008, top, u + 0.008, top + 0.073, _RACK, part="roof", outline=None)
    elif kind == "sunroof":
        w = min(0.22, 0.45 * (u1 - u0))
        cu = (u0 + u1) / 2
        pen.poly([(cu - w / 2, top - 0.01), (cu + w / 2, top - 0.01), (cu + w / 2 - 0.03, top + 0.035),
                  (cu - w / 2 + 0.02, top + 0.035)], _TINT["dark"], part="roof", outline=(150, 170, 200))


def _draw_end(pen: _Pen, a: dict, rear: bool) -> None:
    p = _END[a[GLOBAL]["type"]]
    body = _PAINT[a[GLOBAL]["colour"]]
    clr, base, top, topw = p["clr"], p["base"], p["top"], p["topw"]
    for s in (-1, 1):  # tyres peeking out below the body
        pen.rect(s * 0.33, 0.0, s * 0.47, clr + 0.08, _TYRE, outline=_LINE)
    pen.rect(-0.5, clr, 0.5, base, body, radius=0.06)
    pen.rect(-0.5, clr, 0.5, clr + 0.05, _shade(body, 0.55))               # bumper
    bw = 0.46
    pen.poly([(-bw, base), (bw, base), (topw / 2, top), (-topw / 2, top)], body)
    rt = 0.06
    k = rt / (top - base)
    hw = topw / 2 + (bw - topw / 2) * k
    roof = _PAINT[a["roof"]["colour"]]
    pen.poly([(-hw, top - rt), (hw, top - rt), (topw / 2, top), (-topw / 2, top)], roof, part="roof")
    _draw_roof_kit(pen, a["roof"]["type"], -topw / 2, topw / 2, top, roof)
    # windshield / rear window
    w = a["windows"]
    tint = _TINT[w["tint"]]
    v0, v1 = base + 0.03, top - rt - 0.025
    if rear:
        v0 = v0 + 0.25 * (v1 - v0)
    wb = bw - 0.06 - (bw - topw / 2) * (v0 - base) / (top - base)
    wt = bw - 0.06 - (bw - topw / 2) * (v1 - base) / (top - base)
    if w["shape"] == "square":
        pen.rect(-wt, v0, wt, v1, tint, part="windows", outline=_LINE)
    elif w["shape"] == "rounded":
        pen.rect(-(wb + wt) / 2, v0, (wb + wt) / 2, v1, tint, part="windows", outline=_LINE,
                 radius=0.4 * (v1 - v0))
    else:
        pen.poly([(-wb, v0), (wb, v0), (wt - 0.08, v1), (-wt + 0.08, v1)], tint, part="windows",
                 outline=_LINE)
    # lights (headlights or tail lights) and grille / licence plate
    ls, lc = a["lights"]["shape"], _LIGHT[a["lights"]["colour"]]
    lv = clr + 0.66 * (base - clr)
    for s in (-1, 1):
        cu = s * 0.31
        if ls == "round":
            pen.disc(cu, lv, 0.085, lc, part="lights", outline=_LINE)
        elif ls == "square":
            pen.rect(cu - 0.095, lv - 0.065, cu + 0.095, lv + 0.065, lc, part="lights", outline=_LINE)
        else:
            pen.rect(cu - 0.135, lv - 0.032, cu + 0.135, lv + 0.032, lc, part="lights", outline=_LINE)
    if rear:
        pen.rect(-0.1, clr + 0.07, 0.1, clr + 0.15, (240, 240, 230), outline=_LINE)
    else:
        pen.rect(-0.15, lv - 0.06, 0.15, lv + 0.05, (40, 40, 44), outline=_LINE)
        for i in range(3):
            gv = lv - 0.035 + 0.03 * i
            pen.line(-0.13, gv, 0.13, gv, (90, 90, 96), 0.008)
    mirror = _PAINT[a["mirrors"]["colour"]]
    for s in (-1, 1):
        pen.rect(s * 0.455, base + 0.02, s * 0.575, base + 0.1, mirror, part="mirrors", outline=_LINE)


def _draw_background(img: Image.Image, rng: np.random.Generator, horizon: float) -> None:
    """Sky or wall, road, buildings, poles and lane marks in muted colours."""
    C = img.size[0]
    d = ImageDraw.Draw(img)
    sky = tuple(int(x) for x in rng.integers(120, 220, size=3))
    ground = tuple(int(x) for x in rng.integers(70, 140, size=1).repeat(3) + rng.integers(-12, 12, size=3))
    d.rectangle((0, 0, C, horizon), fill=sky)
    d.rectangle((0, horizon, C, C), fill=ground)
    for _ in range(int(rng.integers(2, 6))):  # buildings / walls
        w, h = rng.uniform(0.12, 0.4) * C, rng.uniform(0.1, 0.45) * C
        x = rng.uniform(-0.1, 1.0) * C
        col = tuple(int(v) for v in rng.integers(60, 200, size=3))
        d.rectangle((x, horizon - h, x + w, horizon), fill=col)
        for _ in range(int(rng.integers(0, 6))):
            wx, wy = x + rng.uniform(0, w), horizon - rng.uniform(0.1, 0.9) * h
            d.rectangle((wx, wy, wx + 0.03 * C, wy + 0.03 * C), fill=_shade(col, 0.6))
    for _ in range(int(rng.integers(0, 3))):  # far poles
        x = rng.uniform(0, C)
        d.rectangle((x, horizon - rng.uniform(0.2, 0.5) * C, x + 0.012 * C, horizon), fill=(70, 70, 74))
    lane_y = horizon + rng.uniform(0.35, 0.8) * (C - horizon)
    for x in np.arange(rng.uniform(-0.2, 0) * C, C, 0.22 * C):  # lane dashes
        d.rectangle((x, lane_y, x + 0.11 * C, lane_y + 0.012 * C), fill=(225, 220, 200))


def _grid(boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    """PART_GRID x PART_GRID bool cells whose centre lies in a box (each box marks >= 1 cell)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    centres = (np.arange(PART_GRID) + 0.5) / PART_GRID
    cols = (centres >= b[:, :1]) & (centres <= b[:, 2:3])          # [k, G]
    rows = (centres >= b[:, 1:2]) & (centres <= b[:, 3:4])
    mid = np.minimum(((b[:, :2] + b[:, 2:]) / 2 * PART_GRID).astype(int), PART_GRID - 1)
    k = np.arange(len(b))
    cols[k, mid[:, 0]] |= ~cols.any(1)                              # a thin box marks its centre
    rows[k, mid[:, 1]] |= ~rows.any(1)
    return (rows[:, :, None] & cols[:, None, :]).any(0)


_NOISE_SIGMAS = (1.5, 3.0, 4.5)
_NOISE: dict[tuple[int, int], Image.Image] = {}


def _noise_tile(i: int, side: int) -> Image.Image:
    """A fixed RGB tile of Gaussian noise around 128 (the same in every process)."""
    if (i, side) not in _NOISE:
        rng = np.random.default_rng([1234, i, side])
        arr = 128 + _NOISE_SIGMAS[i] * rng.standard_normal((side, side, 3))
        _NOISE[(i, side)] = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    return _NOISE[(i, side)]


def render(attrs: dict, view: str, size: int, rng: np.random.Generator
           ) -> tuple[Image.Image, dict[str, dict]]:
    """Render one camera image of an identity.

    Returns (RGB image of ``size`` x ``size``, parts) where parts maps each category visible in
    ``view`` to ``{"box": [x0, y0, x1, y1] in 0..1}``, plus ``"grid"`` (PART_GRID x PART_GRID 0/1
    list of the cells of the separate elements) when the elements fill < GRID_IF_BELOW of the box.
    """
    C = size * SS
    side = view.startswith("side")
    kind = _SIDE if side else _END
    prof = kind[attrs[GLOBAL]["type"]]
    if side:
        s = C * rng.uniform(0.74, 0.9)
        extent = (-0.1, 1.0)                   # mirror sticks out in front of u=0
        height = prof.get("cargo", (0, 0, 0))[2] or 0
        height = max(height, prof["top"]) + 0.08
    else:
        s = C * rng.uniform(0.5, 0.64)
        extent = (-0.58, 0.58)
        height = prof["top"] + 0.08
    ground = C * rng.uniform(0.8, 0.92)
    ground = max(ground, height * s + 0.03 * C)
    ground = min(ground, C - 0.02 * C)
    width = (extent[1] - extent[0]) * s
    left = (C - width) / 2 + rng.uniform(-0.06, 0.06) * C
    left = min(max(left, 0.01 * C), C - width - 0.01 * C)
    bg = Image.new("RGB", (C, C))
    horizon = ground - rng.uniform(0.25, 0.6) * height * s
    _draw_background(bg, rng, horizon)
    ImageDraw.Draw(bg).ellipse((left - 0.02 * C, ground - 0.03 * C, left + width + 0.02 * C,
                                ground + 0.03 * C), fill=(40, 40, 42))  # shadow
    angle = rng.uniform(-5.0, 5.0)
    centre = (left + width / 2, ground - height * s / 2)
    draw = ImageDraw.Draw(bg)
    if view == "side_right":  # front of the vehicle at the right: mirrored drawing
        pen = _Pen(draw, left + width + extent[0] * s, ground, s, -s, centre, angle)
    else:
        pen = _Pen(draw, left - extent[0] * s, ground, s, s, centre, angle)
    if side:
        _draw_side(pen, attrs)
    else:
        _draw_end(pen, attrs, rear=view == "rear")
    if rng.random() < 0.3:  # partial occlusion: a pole or a bush in front of the vehicle
        d = ImageDraw.Draw(bg)
        if rng.random() < 0.5:
            x = left + rng.uniform(0.1, 0.9) * width
            grey = tuple(int(v) for v in rng.integers(50, 140, 3))
            d.rectangle((x, 0, x + rng.uniform(0.03, 0.05) * C, C), fill=grey)
        else:
            x = left + (0 if rng.random() < 0.5 else width) + rng.uniform(-0.1, 0.1) * width
            w, h = rng.uniform(0.15, 0.25) * C, rng.uniform(0.12, 0.22) * C
            d.ellipse((x - w / 2, ground - h, x + w / 2, ground + h / 2),
                      fill=(int(rng.integers(30, 70)), int(rng.integers(90, 140)), int(rng.integers(30, 70))))
    img = bg.reduce(SS)
    # illumination, colour cast, blur and sensor noise
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.8))))
    gain = rng.uniform(0.7, 1.25) * rng.uniform(0.92, 1.08, size=3)
    ramp = np.arange(256, dtype=np.float64)
    lut = np.concatenate([ramp * g for g in gain]) + rng.uniform(-15, 15)
    img = img.point(np.clip(lut + 0.5, 0, 255).astype(np.uint8).tolist())   # per-channel gain + offset
    if rng.random() < 0.5:  # sensor noise (kept mild: noise is what makes PNGs large)
        tile = _noise_tile(int(rng.integers(len(_NOISE_SIGMAS))), max(256, 2 * size))
        x, y = (int(v) for v in rng.integers(0, tile.size[0] - size, 2))
        img = ImageChops.add(img, tile.crop((x, y, x + size, y + size)), 1.0, -128)
    parts = {}
    for cat in PART_CATEGORIES:
        if cat not in VISIBLE_PARTS[view] or cat not in pen.elements:
            continue
        boxes = []
        for box in pen.elements[cat]:
            x0, y0, x1, y1 = box
            x0, y0, x1, y1 = (max(0.0, x0 / C), max(0.0, y0 / C), min(1.0, x1 / C), min(1.0, y1 / C))
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1, y1))
        if boxes:
            union = [min(b[0] for b in boxes), min(b[1] for b in boxes),
                     max(b[2] for b in boxes), max(b[3] for b in boxes)]
            region = {"box": [round(v, 4) for v in union]}
            grid = _grid(boxes)
            # Keep the grid only where the box is a poor stand-in (two wheels, two lamps, two
            # mirrors): it is 576 numbers, and consumers rasterise a lone box themselves.
            if grid.sum() < GRID_IF_BELOW * _grid([union]).sum():
                region["grid"] = grid.astype(np.uint8).tolist()
            parts[cat] = region
    return img, parts


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------

def _image_job(job: tuple) -> list[dict]:
    """Render and caption the images of one identity; writes PNGs, returns their records."""
    seed, pid, split, attrs, views, size, n_captions, error_rate, image_dir = job
    records = []
    for k, view in enumerate(views):
        img, parts = render(attrs, view, size, np.random.default_rng([seed, pid, k, 1]))
        rel = f"{pid:05d}/{pid:05d}_{k:02d}.png"
        path = Path(image_dir) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="PNG", compress_level=1)
        cap_rng = np.random.default_rng([seed, pid, k, 2])
        captions, facts = [], []
        for _ in range(n_captions):
            text, f = describe(attrs, view, cap_rng, error_rate)
            captions.append(text)
            facts.append(f)
        records.append({"split": split, "id": pid, "file_path": rel, "captions": captions,
                        "parts": parts, "view": view, "attributes": attrs, "caption_facts": facts})
    return records


def generate(cfg, seed: int, image_dir: str | Path, workers: int | None = None,
             progress=None) -> list[dict]:
    """Generate the synthetic benchmark.

    ``cfg``: the ``data.synthetic`` params section. Writes ``image_dir/<id>/<id>_<k>.png`` and
    returns the manifest records (train ids first, then val, then test; by id, then image).
    ``workers``: processes (default: all cores; the output does not depend on it).
    """
    fractions = {"train": cfg.split.train, "val": cfg.split.val, "test": cfg.split.test}
    mix = np.array([cfg.views.side_left, cfg.views.side_right, cfg.views.front, cfg.views.rear])
    n_ids, per_id, size = cfg.n_ids, cfg.images_per_id, cfg.image_size
    n_captions, error_rate, family_size = cfg.captions_per_image, cfg.caption_error_rate, cfg.family_size
    rng = np.random.default_rng([seed, 0])
    identities = sample_identities(n_ids, family_size, rng)
    fam_split = split_families(identities[-1]["family"] + 1, fractions, rng)
    jobs = []
    for i, attrs in enumerate(identities):
        pid = i + 1
        vrng = np.random.default_rng([seed, pid, 0])
        views = [VIEWS[j] for j in vrng.choice(len(VIEWS), size=per_id, p=mix / mix.sum())]
        jobs.append((seed, pid, fam_split[attrs["family"]], attrs, views, size, n_captions,
                     error_rate, str(image_dir)))
    order = {"train": 0, "val": 1, "test": 2}
    jobs.sort(key=lambda j: (order[j[2]], j[1]))
    workers = workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(jobs) * per_id // IMAGES_PER_WORKER))
    records: list[dict] = []
    if workers == 1:
        for j in jobs:
            records += _image_job(j)
            if progress:
                progress(len(records))
    else:
        # spawn: safe even when the caller has imported torch (fork + threads can deadlock)
        with mp.get_context("spawn").Pool(workers) as pool:
            for recs in pool.imap(_image_job, jobs, chunksize=8):
                records += recs
                if progress:
                    progress(len(records))
    return records


def attribute_table() -> dict[str, Any]:
    """The vocabulary (for meta.json and documentation)."""
    return {"types": list(TYPES), "colours": list(BODY_COLOURS),
            "parts": {c: {a: list(v) for a, v in attrs.items()} for c, attrs in PART_ATTRIBUTES.items()},
            "visible_parts": {v: list(c) for v, c in VISIBLE_PARTS.items()}, "part_grid": PART_GRID}
