"""Witness-style captions of a synthetic image, with the facts each caption states.

A caption names type + colour and a varying subset of the attributes of the parts *visible* in the
view, with synonyms and occasional witness mistakes (``error_rate``). Every random choice is drawn
from the caller's generator in a fixed order, so a seed gives the same captions.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from pfcvr.data.synthetic.vocabulary import (BODY_COLOURS, GLOBAL, PART_ATTRIBUTES, TYPES,
                                             VISIBLE_PARTS)

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

