"""Part lexicon: which caption words name which vehicle part, and caption -> part phrases.

A caption is split into clauses (at sentence punctuation, commas and the conjunctions of
``_SPLIT_WORDS``); each clause is assigned to the part categories whose words it contains, with
two rules that keep a clause on the part it is *about*:

- in a noun compound the last part word is the head ("glass roof" -> roof, "door mirror" ->
  mirrors, "roof rack" -> roof);
- a part word after a preposition is a location modifier when a part word comes before it
  ("tinted windows on the doors" -> windows, "a rack on the roof" -> roof).

"light"/"dark" followed by a colour ("light grey") are adjectives, not lamps.
"""
from __future__ import annotations

import re

from pfcvr.data.categories import PART_CATEGORIES

# Part words and their synonyms (singular and plural). One word each: compounds such as
# "tail light" or "hub cap" are covered by their head word ("light", "cap" -> no; "hub").
PART_WORDS: dict[str, tuple[str, ...]] = {
    "windows": ("window", "windows", "windshield", "windshields", "windscreen", "windscreens",
                "glass", "pane", "panes", "backlight"),
    "lights": ("light", "lights", "lamp", "lamps", "headlight", "headlights", "headlamp",
               "headlamps", "taillight", "taillights", "taillamp", "taillamps", "foglight",
               "foglights", "foglamp", "foglamps", "indicator", "indicators", "blinker",
               "blinkers", "brakelight", "brakelights"),
    "wheels": ("wheel", "wheels", "rim", "rims", "tire", "tires", "tyre", "tyres", "hubcap",
               "hubcaps", "hub", "hubs", "alloy", "alloys"),
    "mirrors": ("mirror", "mirrors"),
    "roof": ("roof", "roofs", "rooftop", "rack", "racks", "roofrack", "roofracks", "sunroof",
             "sunroofs", "moonroof", "moonroofs"),
    "doors": ("door", "doors", "handle", "handles", "doorhandle", "doorhandles"),
}
assert tuple(PART_WORDS) == PART_CATEGORIES

WORD_TO_CATEGORY: dict[str, str] = {w: c for c, words in PART_WORDS.items() for w in words}

# "light" / "dark" before one of these is a shade adjective ("light grey car"), not a part.
_SHADES = frozenset("""blue grey gray green brown yellow red pink purple silver white black tan
    beige gold golden orange violet cyan colored coloured colour color tinted""".split())
_PREPOSITIONS = frozenset("""on of near above below behind at in over under beside by along
    across from to onto atop beneath around""".split())
# Conjunctions that start a new clause. Repairs keep a part's description in one piece:
# - a part-less fragment after "with"/"and"/"that"/"which" joins the part clause before it
#   ("two doors with a red stripe", "the wheels that are black");
# - two clauses of the same single category joined by "with"/"and" are one ("a red roof with a
#   rack", "a stripe along the doors and a star decal on the door");
# - a short part-less fragment directly before "and"/"or" joins the next one ("black and white
#   wheels").
_SPLIT_WORDS = ("and", "or", "but", "while", "whereas", "with", "which", "that", "plus")
_MERGE_WORDS = frozenset({"and", "or"})
_ATTACH_WORDS = frozenset({"with", "and", "that", "which"})
_SAME_PART_WORDS = frozenset({"with", "and"})
_MERGE_MAX_WORDS = 2
_SPLIT_RE = re.compile(r"\s*([.;:!?,]+)\s*|\s+(" + "|".join(_SPLIT_WORDS) + r")\s+", re.IGNORECASE)
# Leading narration that says nothing about the part ("It also had", "I noticed", "has").
_FILLER_RE = re.compile(r"(?:(?:it|i|we|he|she|they|the (?:car|vehicle))\s+)?(?:also\s+)?"
                        r"(?:had|has|have|noticed|saw|see|remember|featured|features)\s+",
                        re.IGNORECASE)
_LEAD_RE = re.compile(r"(" + "|".join(_SPLIT_WORDS) + r")\s+", re.IGNORECASE)
_WORD_RE = re.compile(r"[a-z]+")


def words(text: str) -> list[str]:
    """Lower-case alphabetic words of ``text`` ("tail-light" -> ["tail", "light"])."""
    return _WORD_RE.findall(text.lower())


def _part_tokens(tokens: list[str]) -> list[tuple[int, str]]:
    """(position, category) of every part word of a word list, shade adjectives excluded."""
    out = []
    for i, w in enumerate(tokens):
        cat = WORD_TO_CATEGORY.get(w)
        if cat is None:
            continue
        if w == "light" and i + 1 < len(tokens) and tokens[i + 1] in _SHADES:
            continue
        out.append((i, cat))
    return out


def _categories(tokens: list[str], found: list[tuple[int, str]]) -> list[str]:
    if not found:
        return []
    # Compound nouns: of adjacent part words only the last (the head) counts.
    heads = [(i, c) for k, (i, c) in enumerate(found)
             if not (k + 1 < len(found) and found[k + 1][0] == i + 1)]
    # Location modifiers: part words after a preposition that follows a first part word.
    first = heads[0][0]
    prep = next((j for j in range(first + 1, len(tokens)) if tokens[j] in _PREPOSITIONS), None)
    if prep is not None:
        heads = [(i, c) for i, c in heads if i < prep]
    cats = {c for _, c in heads}
    return [c for c in PART_CATEGORIES if c in cats]


def clause_categories(clause: str) -> list[str]:
    """Part categories a clause is about, in PART_CATEGORIES order (see module doc)."""
    tokens = words(clause)
    return _categories(tokens, _part_tokens(tokens))


def _fragments(caption: str) -> list[tuple[str, str]]:
    """(text, separator before it) pieces; the separator is a lower-case word, "," or "."."""
    pieces = _SPLIT_RE.split(caption)
    # re.split with two groups yields [text, punct|None, word|None, text, punct|None, ...].
    texts = pieces[0::3]
    seps = [""] + [(w or "").lower() if w else ("," if p and set(p) <= {","} else ".")
                   for p, w in zip(pieces[1::3], pieces[2::3])]
    out = []
    for text, sep in zip(texts, seps):
        text = (text or "").strip(" \t\n-\"'()")
        lead = _LEAD_RE.match(text)  # ", and slim headlights": drop the word, keep the comma
        if lead:
            text = text[lead.end():]
        filler = _FILLER_RE.match(text)
        if filler and filler.end() < len(text):
            text = text[filler.end():]
        out.append((text, sep))
    return out


def _clauses(caption: str) -> list[tuple[str, list[str]]]:
    """(clause, its categories) pairs of a caption; the work behind split/assign."""
    frags = _fragments(caption)
    out: list[tuple[str, list[str]]] = []
    pending, pending_sep = "", ""
    for k, (text, sep) in enumerate(frags):
        if pending:
            text, sep = (f"{pending} {text}" if text else pending), pending_sep
            pending = ""
        if not text:
            continue
        tokens = words(text)
        found = _part_tokens(tokens)
        cats = _categories(tokens, found)
        if out:
            prev_text, prev = out[-1]
            # Joined clauses keep the categories of the one before (see module doc).
            if prev and ((sep in _ATTACH_WORDS and not cats) or
                         (sep in _SAME_PART_WORDS and len(prev) == 1 and cats == prev)):
                out[-1] = (f"{prev_text} {sep} {text}", prev)
                continue
        after = frags[k + 1][1] if k + 1 < len(frags) else ""
        if after in _MERGE_WORDS and len(tokens) <= _MERGE_MAX_WORDS and not found:
            pending, pending_sep = f"{text} {after}", sep
            continue
        out.append((text, cats))
    if pending:
        out.append((pending.rsplit(" ", 1)[0], []))
    return out


def split_clauses(caption: str) -> list[str]:
    """Split a caption into clause strings (original casing, trimmed, none empty)."""
    return [text for text, _ in _clauses(caption)]


def assign_phrases(caption: str) -> dict[str, list[str]]:
    """``{category: [clause, ...]}`` for the categories a caption describes (others absent)."""
    out: dict[str, list[str]] = {}
    for clause, cats in _clauses(caption):
        for cat in cats:
            out.setdefault(cat, []).append(clause)
    return {c: out[c] for c in PART_CATEGORIES if c in out}


def phrase_category(phrase: str) -> str | None:
    """The single category a short phrase names ("car wheel" -> "wheels"); None if 0 or >1."""
    cats = clause_categories(phrase)
    return cats[0] if len(cats) == 1 else None
