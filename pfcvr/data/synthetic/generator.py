"""The benchmark generator: identities -> views -> rendered PNGs + captions -> manifest records.

Each identity and image draws from its own generator keyed by (seed, id, image), so the output is
byte-identical whatever the number of worker processes.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np

from pfcvr.data.synthetic.captions import describe
from pfcvr.data.synthetic.identities import sample_identities, split_families
from pfcvr.data.synthetic.rendering import render
from pfcvr.data.synthetic.vocabulary import VIEWS

IMAGES_PER_WORKER = 400    # a worker process per this many images (fewer: one process is faster)


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


def render_jobs(fn, jobs: list, n_images: int, workers: int | None, per_worker: int,
                progress=None) -> list:
    """``fn(job)`` -> list of outputs, for every job in order, concatenated: in this process, or
    in ``workers`` (default: all cores) spawned processes, at most one per ``per_worker`` of the
    ``n_images`` the jobs make (a small set renders faster in one process). The output does not
    depend on the number of processes. ``progress``: optional callable(outputs so far)."""
    workers = workers or os.cpu_count() or 1
    workers = max(1, min(workers, n_images // per_worker))
    out: list = []
    if workers == 1:
        for job in jobs:
            out += fn(job)
            if progress:
                progress(len(out))
        return out
    # spawn: safe even when the caller has imported torch (fork + threads can deadlock)
    with mp.get_context("spawn").Pool(workers) as pool:
        for part in pool.imap(fn, jobs, chunksize=8):
            out += part
            if progress:
                progress(len(out))
    return out


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
    records = render_jobs(_image_job, jobs, len(jobs) * per_id, workers, IMAGES_PER_WORKER,
                          progress)
    return records

