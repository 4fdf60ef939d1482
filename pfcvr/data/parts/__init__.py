"""Part pairs: for every manifest record a region per part category and the caption phrases.

Region sources (``parts.source``):
- ``annotations``: the manifest's ``parts`` boxes / grids, validated;
- ``groundingdino``: open-vocabulary detections (pfcvr.data.grounding), best box per category;
- ``prior``: a fixed layout per camera view (side / front / rear), not evidence of anything.

The output document (``data/parts/parts.json``) is aligned 1:1 with the manifest:
``{"categories", "source", "images": [{file_path, split, id, regions: {cat: region | null},
phrases: [{cat: [phrase, ...]} per caption]}]}`` with ``region = {box, grid?, source, score}``.
A category with no region is ``null`` (the model masks it out); categories without a phrase are
absent from a caption's phrase mapping.

Modules, one job each: ``regions`` (validation and the annotation / detector sources, the error
policy), ``prior`` (fixed per-view layouts), ``quality`` (caption phrases, assignment quality,
agreement with annotations), ``build`` (the document, its stats, figure examples). The stage's
work (checks first, then the run) is :mod:`pfcvr.pipeline.parts`.
"""
from __future__ import annotations

from pfcvr.data.parts.build import SOURCE_NOTES, SOURCES, build_parts, compute_stats, figure_items
from pfcvr.data.parts.prior import PRIOR_LAYOUTS, prior_layouts, prior_regions
from pfcvr.data.parts.quality import (agreement_with_annotations, assignment_quality,
                                      caption_phrases)
from pfcvr.data.parts.regions import (REGION_SOURCE, PartsError, annotation_region,
                                      annotation_regions, check_box, check_grid,
                                      detector_regions, grid_box)

__all__ = ["PRIOR_LAYOUTS", "REGION_SOURCE", "SOURCES", "SOURCE_NOTES", "PartsError",
           "agreement_with_annotations", "annotation_region", "annotation_regions",
           "assignment_quality", "build_parts", "caption_phrases", "check_box", "check_grid",
           "compute_stats", "detector_regions", "figure_items", "grid_box", "prior_layouts",
           "prior_regions"]
