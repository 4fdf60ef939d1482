"""The published layouts of the real datasets that ``data.source`` names, and the one list of
``data.source`` values (:data:`SOURCES`: the embedded benchmark, then one per layout below; the
params schema's ``Literal`` is built from it, so a new reader is added here only).

Each :class:`SourceLayout` says where the annotation file and the images are, which field holds
an image path, how splits are written and whether per-image part files are referenced:

| source | annotation file | path field | images | splits |
|---|---|---|---|---|
| ``t2i-veri`` | reid_with_mask_prompt_and_boxes_filepath_refixID.json | file_path | root | train, test, other = val |
| ``t2i-verw`` | reid_with_mask_prompt_and_boxes_filepath_prefixid_idsplit_70_30.json | file_path | root | train, val (val becomes test) |
| ``cuhk-pedes`` | reid_raw.json | file_path | root/imgs | train, val, test |
| ``icfg-pedes`` | ICFG-PEDES.json (or ICFG_PEDES.json) | file_path | root/imgs | train, test |
| ``rstpreid`` | data_captions.json | img_path | root/imgs | train, val, test |

Every record is one image ``{split, id, <path field>, captions: [str, ...]}``; the T2I sources
add ``boxes`` (a part file, see :mod:`pfcvr.data.partfiles`), ``mask`` and ``prompt`` (unused).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceLayout:
    """How one dataset is laid out (see the module table)."""

    name: str
    annotations: tuple[str, ...]       # usual annotation file names, the first preferred
    path_field: str                    # the record field holding the image path
    images_subdir: str | None          # images under <root>/<subdir> when that folder exists
    splits: tuple[str, ...] | None     # the only splits allowed; None: T2I rules (module table)
    part_files: bool                   # records may reference per-image part files (`boxes`)

    @property
    def fields(self) -> tuple[str, ...]:
        """The required fields of a record, in the file's terms."""
        return ("split", "id", self.path_field, "captions")

    def images_root(self, root: Path) -> Path:
        sub = root / self.images_subdir if self.images_subdir else None
        return sub if sub is not None and sub.is_dir() else root

    def describe(self) -> str:
        """One phrase for error messages: the record fields and the splits."""
        splits = ", ".join(self.splits) if self.splits else "train, test (others are val)"
        return f"records {{{', '.join(self.fields)}}}, splits {splits}"


_T2I = dict(path_field="file_path", images_subdir=None, splits=None, part_files=True)
LAYOUTS: dict[str, SourceLayout] = {
    "t2i-veri": SourceLayout("t2i-veri", ("reid_with_mask_prompt_and_boxes_filepath_refixID.json",),
                             **_T2I),
    "t2i-verw": SourceLayout("t2i-verw", (
        "reid_with_mask_prompt_and_boxes_filepath_prefixid_idsplit_70_30.json",), **_T2I),
    "cuhk-pedes": SourceLayout("cuhk-pedes", ("reid_raw.json",), "file_path", "imgs",
                               ("train", "val", "test"), False),
    "icfg-pedes": SourceLayout("icfg-pedes", ("ICFG-PEDES.json", "ICFG_PEDES.json"), "file_path",
                               "imgs", ("train", "test"), False),
    "rstpreid": SourceLayout("rstpreid", ("data_captions.json",), "img_path", "imgs",
                             ("train", "val", "test"), False),
}
DEFAULT_ANNOTATIONS = {name: layout.annotations[0] for name, layout in LAYOUTS.items()}
SYNTHETIC = "synthetic"                # the embedded benchmark (pfcvr.data.synthetic)
SOURCES = (SYNTHETIC, *LAYOUTS)        # every value of data.source (pfcvr.params_schema)


def layout_of(source: str) -> SourceLayout:
    """The layout of ``data.source`` (ValueError naming the key for an unknown source)."""
    if source not in LAYOUTS:
        raise ValueError(f"data.source={source!r}: readers exist for {', '.join(LAYOUTS)}")
    return LAYOUTS[source]


def find_annotations(layout: SourceLayout, root: Path, annotations: str) -> Path:
    """The annotation file: ``data.annotations`` inside ``root``, else the layout's usual name.

    Raises FileNotFoundError listing the JSON files that are there.
    """
    names = (annotations,) if annotations else layout.annotations
    for name in names:
        path = root / name
        if path.is_file():
            return path
    found = sorted(p.name for p in root.glob("*.json"))[:10]
    raise FileNotFoundError(f"data.annotations: {root / names[0]} not found; JSON files in {root}: "
                            f"{', '.join(found) or 'none'} (set data.annotations to one of them)")
