"""The part lexicon: part words and synonyms, clause splitting, phrase assignment."""
from __future__ import annotations

import pytest

from pfcvr.data.categories import PART_CATEGORIES
from pfcvr.data.lexicon import (PART_WORDS, WORD_TO_CATEGORY, assign_phrases, clause_categories,
                                phrase_category, split_clauses, words)

# The synonyms named in the issue, plus plurals and a few common variants.
SYNONYMS = {
    "wheels": ["wheel", "wheels", "rim", "rims", "tire", "tires", "tyre", "hubcap", "hubcaps", "alloys"],
    "lights": ["light", "lights", "lamp", "lamps", "headlight", "headlights", "taillight",
               "taillights", "headlamps"],
    "windows": ["window", "windows", "windshield", "windscreen", "glass"],
    "mirrors": ["mirror", "mirrors"],
    "roof": ["roof", "rack", "sunroof", "rooftop"],
    "doors": ["door", "doors", "handle", "handles"],
}


def test_lexicon_covers_the_six_categories_in_order():
    assert tuple(PART_WORDS) == PART_CATEGORIES
    for cat, ws in SYNONYMS.items():
        for w in ws:
            assert WORD_TO_CATEGORY[w] == cat, w
    # no word belongs to two categories
    all_words = [w for ws in PART_WORDS.values() for w in ws]
    assert len(all_words) == len(set(all_words))


@pytest.mark.parametrize("cat", PART_CATEGORIES)
def test_every_synonym_assigns_its_category(cat):
    for w in PART_WORDS[cat]:
        assert assign_phrases(f"A blue car with big {w}.") == {cat: [f"big {w}"]}, w


def test_words_split_hyphens_and_ignore_case():
    assert words("Tail-Light, LED!") == ["tail", "light", "led"]


def test_split_clauses_at_punctuation_and_conjunctions():
    cap = "A red sedan with black wheels, tinted windows; red mirrors. The roof is white but the doors are blue"
    assert split_clauses(cap) == ["A red sedan", "black wheels", "tinted windows", "red mirrors",
                                  "The roof is white", "the doors are blue"]


def test_leading_conjunction_after_a_comma_is_dropped():
    assert split_clauses("A van, with slim lamps, and round wheels.") == \
        ["A van", "slim lamps", "round wheels"]


def test_short_partless_fragment_joins_the_next_one():
    # "black and white wheels" stays one phrase; "front and rear lights" too
    assert assign_phrases("A car with black and white wheels.") == {"wheels": ["black and white wheels"]}
    assert assign_phrases("The front and rear lights are red.") == \
        {"lights": ["The front and rear lights are red"]}


def test_partless_fragment_attaches_to_the_part_before():
    cap = "A truck with two doors with a red stripe and a star decal, and round headlights."
    assert assign_phrases(cap) == {"lights": ["round headlights"],
                                   "doors": ["two doors with a red stripe and a star decal"]}


def test_same_part_with_clause_is_one_phrase():
    assert assign_phrases("a red roof with a rack") == {"roof": ["a red roof with a rack"]}
    # different parts joined by "with" stay apart
    assert assign_phrases("black wheels with red mirrors") == \
        {"wheels": ["black wheels"], "mirrors": ["red mirrors"]}


def test_light_before_a_colour_is_a_shade_not_a_lamp():
    assert assign_phrases("A light grey sedan.") == {}
    assert assign_phrases("A light blue van with square lights.") == {"lights": ["square lights"]}


def test_compound_nouns_take_the_last_part_word():
    assert clause_categories("a glass roof") == ["roof"]
    assert clause_categories("door mirrors painted red") == ["mirrors"]
    assert clause_categories("a roof rack") == ["roof"]
    assert clause_categories("the door handles") == ["doors"]
    assert clause_categories("window glass") == ["windows"]


def test_location_modifiers_do_not_count():
    assert clause_categories("tinted windows on the doors") == ["windows"]
    assert clause_categories("a rack on the roof") == ["roof"]
    assert clause_categories("a stripe along the doors") == ["doors"]
    # without a part word before the preposition the part word is the subject
    assert clause_categories("the colour of the wheels is gold") == ["wheels"]
    # two parts in one clause without a preposition: both
    assert clause_categories("the wheels match the mirrors") == ["wheels", "mirrors"]


def test_assign_phrases_orders_categories_and_keeps_several_phrases():
    cap = "It had red doors. The headlights were round, the doors had a stripe and the tires were worn."
    out = assign_phrases(cap)
    assert list(out) == ["lights", "wheels", "doors"]
    assert out["doors"] == ["red doors", "the doors had a stripe"]


def test_leading_narration_is_dropped_from_phrases():
    assert assign_phrases("I saw a bus. It also had slim lamps.") == {"lights": ["slim lamps"]}
    assert assign_phrases("A bus that has red doors.") == {"doors": ["red doors"]}
    assert assign_phrases("I noticed the wheels that were black.") == \
        {"wheels": ["the wheels that were black"]}
    # a subject that is a part stays
    assert assign_phrases("The mirrors had red caps.") == {"mirrors": ["The mirrors had red caps"]}


def test_captions_without_part_words_give_nothing():
    assert assign_phrases("A white SUV driving fast.") == {}
    assert assign_phrases("") == {}


def test_phrase_category_for_detector_prompts():
    assert [phrase_category(p) for p in ("car window", "car light", "car wheel", "car mirror",
                                         "car roof", "car door")] == list(PART_CATEGORIES)
    assert phrase_category("car bumper") is None
    assert phrase_category("wheel and door") is None  # ambiguous
