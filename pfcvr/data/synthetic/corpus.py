"""The synthetic *pretraining corpus*: many vehicles, few images each, coarse alt-text captions.

It stands in for the web image-text pairs CLIP is pretrained on (docs/method.md §3.1 starts from
OpenAI's CLIP): captions name mostly type, colour and view, and mention a part only now and then
(``part_rate``), as alt-text does. It is drawn from its own seed stream (``[seed, CORPUS_STREAM,
...]``, never used by the benchmark generator) and is identity-disjoint from the benchmark: a
vehicle whose full attribute set (type, colour and every part attribute) equals a benchmark
identity's is redrawn, and the count of redraws is reported in the stats.

Images are rendered in memory (uint8 arrays), by the same renderer as the benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from pfcvr.data.synthetic.captions import (_article, _choose_said, _phrase, _pick, _TYPE_WORDS,
                                           _word)
from pfcvr.data.synthetic.generator import render_jobs
from pfcvr.data.synthetic.identities import _sample_parts, identity_key
from pfcvr.data.synthetic.rendering import render
from pfcvr.data.synthetic.vocabulary import BODY_COLOURS, GLOBAL, TYPES, VIEWS, VISIBLE_PARTS

CORPUS_STREAM = 7919       # seed-stream tag of the corpus; the benchmark uses tags 0..2
IMAGES_PER_WORKER = 500    # a worker process per this many images

_VIEW_WORDS = {"side_left": ("side view", "seen from the side", "profile"),
               "side_right": ("side view", "seen from the side", "profile"),
               "front": ("front view", "seen from the front", "head-on"),
               "rear": ("rear view", "seen from behind", "from the back")}
# Alt-text frames: {v} = "red sedan", {w} = view words, {p} = an optional part phrase.
_ALT = ("{a} {v}", "photo of {a} {v}", "{a} {v}, {w}", "{v} {w}", "{a} {v} on the road",
        "street photo of {a} {v} {w}", "{a} parked {v}", "{v}")


def alt_text(attrs: dict, view: str, rng: np.random.Generator, part_rate: float) -> str:
    """One coarse caption: type and colour (always), view words (often), one part phrase with
    probability ``part_rate``. No witness mistakes: alt-text is noisy by omission, not error."""
    colour = _word(rng, GLOBAL, "colour", attrs[GLOBAL]["colour"])
    vehicle = f"{colour} {_pick(rng, _TYPE_WORDS[attrs[GLOBAL]['type']])}"
    text = _ALT[rng.integers(len(_ALT))].format(a=_article(vehicle), v=vehicle,
                                                w=_pick(rng, _VIEW_WORDS[view]))
    if rng.random() < part_rate:
        visible = VISIBLE_PARTS[view]
        cat = visible[rng.integers(len(visible))]
        said, _ = _choose_said(rng, cat, attrs[cat], 0.0)
        text += f" with {_phrase(rng, cat, said, view)}"
    return text


def sample_corpus_identities(n_ids: int, rng: np.random.Generator, exclude: Iterable[tuple]
                             ) -> tuple[list[dict], int]:
    """``n_ids`` vehicles with independent type, colour and parts (no families), none of whose
    :func:`identity_key` is in ``exclude`` or repeated. Returns (attrs list, redraws made)."""
    exclude = set(exclude)
    out, redrawn = [], 0
    while len(out) < n_ids:
        attrs = {GLOBAL: {"type": str(rng.choice(TYPES)), "colour": str(rng.choice(BODY_COLOURS))},
                 **_sample_parts(rng)}
        key = identity_key(attrs)
        if key in exclude:
            redrawn += 1
            continue
        exclude.add(key)
        out.append(attrs)
    return out, redrawn


def _render_job(job: tuple) -> list[np.ndarray]:
    seed, i, attrs, views, size = job
    return [np.asarray(render(attrs, v, size, np.random.default_rng([seed, CORPUS_STREAM, i, k, 1]))[0],
                       dtype=np.uint8) for k, v in enumerate(views)]


@dataclass
class Corpus:
    """The rendered corpus. ``images``: uint8 [N, S, S, 3]; ``captions[i]``: the alt-texts of
    image i; ``ids``: identity index of each image (0..n_ids-1); ``stats``: what it holds."""

    images: np.ndarray
    captions: list[list[str]]
    ids: np.ndarray
    stats: dict = field(default_factory=dict)


def build_corpus(n_ids: int, images_per_id: int, captions_per_image: int, part_rate: float,
                 image_size: int, seed: int, exclude: Iterable[tuple] = (),
                 workers: int | None = None, progress=None) -> Corpus:
    """Render the pretraining corpus (deterministic in ``seed``, whatever ``workers``).

    ``exclude``: identity keys (:func:`identity_key`) of the benchmark, never drawn.
    ``progress``: optional callable(images_done).
    """
    exclude = list(exclude)
    rng = np.random.default_rng([seed, CORPUS_STREAM, 0])
    identities, redrawn = sample_corpus_identities(n_ids, rng, exclude)
    jobs, captions, ids, views_used = [], [], [], {v: 0 for v in VIEWS}
    mentions = 0
    for i, attrs in enumerate(identities):
        r = np.random.default_rng([seed, CORPUS_STREAM, i + 1, 0])
        views = [VIEWS[j] for j in r.choice(len(VIEWS), size=images_per_id)]
        jobs.append((seed, i, attrs, views, image_size))
        for v in views:
            caps = [alt_text(attrs, v, r, part_rate) for _ in range(captions_per_image)]
            mentions += sum(" with " in c for c in caps)
            captions.append(caps)
            ids.append(i)
            views_used[v] += 1
    images = render_jobs(_render_job, jobs, n_ids * images_per_id, workers, IMAGES_PER_WORKER,
                         progress)
    n_caps = len(captions) * captions_per_image
    stats = {"n_ids": n_ids, "n_images": len(images), "n_captions": n_caps,
             "images_per_id": images_per_id, "captions_per_image": captions_per_image,
             "part_rate": part_rate, "captions_with_a_part": mentions,
             "views": views_used, "benchmark_identities_excluded": len(set(exclude)),
             "redrawn_benchmark_matches": redrawn,
             "shared_full_attribute_sets_with_benchmark": len(
                 {identity_key(a) for a in identities} & set(exclude))}
    return Corpus(np.stack(images), captions, np.asarray(ids, dtype=np.int64), stats)
