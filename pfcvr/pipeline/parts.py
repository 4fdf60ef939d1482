"""The work of the DVC stage ``parts``: the prepared manifest -> the parts document, its stats and
figure items (``stages/parts.py`` only does the I/O around :class:`PartsJob`).

:meth:`PartsJob.from_params` does everything that must fail before any work (a bad prompt, missing
detector weights, an absent device, an unreadable manifest); :meth:`PartsJob.run` does the work.
The stage calls the first before it opens its MLflow run and the second inside it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from pfcvr.config import Params, flatten
from pfcvr.data.grounding import (DetectorSettings, check_images_exist, detect_parts,
                                  detector_device, prompt_phrases, resolve_detector)
from pfcvr.data.manifest import images_root, record_name
from pfcvr.data.parts.build import build_parts, figure_items
from pfcvr.runtime.atomic import read_json
from pfcvr.runtime.output_set import require_whole


@dataclass
class PartsResult:
    """What one parts run produced.

    ``doc``: the parts document (aligned 1:1 with ``records``); ``stats``: its stats (DVC metrics
    file); ``detect_info``: detector counters (images, cached, computed), empty without a
    detector; ``root``: the images root; ``seconds``: wall time of region + phrase building.
    """

    source: str
    doc: dict
    stats: dict
    records: list[dict]
    root: Path
    seconds: float
    detect_info: dict = field(default_factory=dict)

    def document_json(self) -> str:
        """``parts.json`` text. Compact: the grids make the file large; it is read once per run."""
        return json.dumps(self.doc, separators=(",", ":")) + "\n"

    def metrics(self) -> dict[str, float]:
        """The numeric stats with dotted keys, plus seconds, images_per_second, detector.*."""
        out = {k: v for k, v in flatten(self.stats).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
        out["seconds"] = self.seconds
        out["images_per_second"] = len(self.records) / max(self.seconds, 1e-9)
        out.update({f"detector.{k}": v for k, v in self.detect_info.items()})
        return out

    def figure_items(self, n: int = 4) -> list[dict]:
        """Examples for :func:`pfcvr.report.figures.data.part_pairs_figure` (see
        :func:`pfcvr.data.parts.build.figure_items`)."""
        return figure_items(self.doc, self.root, n=n, records=self.records)

    def figure_title(self) -> str:
        return (f"Part pairs (parts.source = {self.source}): part crop above the caption phrase "
                "assigned to that part")

    def summary(self) -> str:
        """One line for the log: counts, time, and the assignment quality when measured."""
        s = self.stats
        line = (f"{len(self.records)} images, source {self.source}, {self.seconds:.1f} s; "
                f"regions/image {s['regions_per_image']}, phrases/caption {s['phrases_per_caption']}")
        if "assignment" in s:
            line += (f"; assignment P {s['assignment']['precision']:.3f} "
                     f"R {s['assignment']['recall']:.3f}")
        return line


@dataclass
class PartsJob:
    """A checked parts run: settings, the manifest records and where their images are."""

    source: str
    on_error: str
    settings: DetectorSettings
    records: list[dict]
    root: Path
    cache_dir: Path
    unknown_category: str = "error"

    @classmethod
    def from_params(cls, params: Params, prepared_dir: str | Path,
                    cache_dir: str | Path) -> "PartsJob":
        """Check ``params.parts`` and read ``<prepared_dir>/{manifest,meta}.json``.

        Raises DetectorError (bad prompt; with ``parts.source=groundingdino`` missing weights or
        device), FileNotFoundError / ValueError (no or malformed manifest, or a prepare run that
        was killed while publishing its outputs), before any work.
        """
        cfg = params.parts
        settings = DetectorSettings.from_config(cfg)    # every parts.* key, whatever the source
        prompt_phrases(settings.prompt)                 # a bad prompt fails now, not mid-run
        if cfg.source == "groundingdino":               # missing weights fail before any work
            resolve_detector(settings.detector)
            detector_device(settings.device)
        prepared = Path(prepared_dir)
        require_whole(prepared, "prepare")   # killed while publishing: stats/figure may be old
        records = read_json(prepared / "manifest.json")
        if not isinstance(records, list):
            raise ValueError(f"{prepared / 'manifest.json'}: must be a JSON list of records")
        meta_file = prepared / "meta.json"
        root = images_root(prepared, read_json(meta_file) if meta_file.is_file() else {})
        return cls(cfg.source, params.data.on_error, settings, records, root, Path(cache_dir),
                   cfg.unknown_category)

    def _detect(self, indices: list[int], info: dict) -> list[dict[str, dict]]:
        paths = [self.root / self.records[i]["file_path"] for i in indices]
        check_images_exist(paths, [record_name(i, self.records[i]) for i in indices])
        detections, counts = detect_parts(self.settings, paths, self.cache_dir)
        info.update(counts)
        return detections

    def run(self) -> PartsResult:
        """Build the parts document and its stats (raises PartsError on bad part data)."""
        t0 = time.perf_counter()
        info: dict = {}
        doc, stats = build_parts(self.records, self.source, self.on_error,
                                 detect=lambda indices: self._detect(indices, info),
                                 unknown_category=self.unknown_category)
        seconds = time.perf_counter() - t0
        if info:
            s = self.settings
            stats["detector"] = {"path": s.detector, "prompt": s.prompt,
                                 "box_threshold": s.box_threshold, "text_threshold": s.text_threshold}
        return PartsResult(self.source, doc, stats, self.records, self.root, seconds, info)
