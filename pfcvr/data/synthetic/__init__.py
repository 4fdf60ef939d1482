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

Modules, one job each: ``vocabulary`` (types, colours, part attributes, views), ``identities``
(families and splits), ``captions`` (witness captions and their facts), ``pen`` and ``vehicles``
(drawing), ``rendering`` (one camera image and its part regions), ``generator`` (the benchmark),
``corpus`` (the pretraining corpus: many vehicles, coarse alt-text captions, identity-disjoint from
the benchmark, rendered in memory for the pretrain stage).
"""
from __future__ import annotations

from pfcvr.data.synthetic.captions import describe
from pfcvr.data.synthetic.generator import generate
from pfcvr.data.synthetic.identities import MIN_FAMILY_DIFF, sample_identities, split_families
from pfcvr.data.synthetic.rendering import GRID_IF_BELOW, render
from pfcvr.data.synthetic.vocabulary import (BODY_COLOURS, GLOBAL, PART_ATTRIBUTES, PART_GRID,
                                             TYPES, VIEWS, VISIBLE_PARTS, attribute_table)

__all__ = ["BODY_COLOURS", "GLOBAL", "GRID_IF_BELOW", "MIN_FAMILY_DIFF", "PART_ATTRIBUTES",
           "PART_GRID", "TYPES", "VIEWS", "VISIBLE_PARTS", "attribute_table", "describe",
           "generate", "render", "sample_identities", "split_families"]
