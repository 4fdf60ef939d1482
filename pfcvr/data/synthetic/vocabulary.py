"""What the synthetic benchmark can say: vehicle types, colours, part attributes, camera views.

Plain data shared by the identity sampler, the caption writer and the renderer; ``attribute_table``
is the copy written to ``meta.json``.
"""
from __future__ import annotations

from typing import Any

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
SIDE_PARTS = ("windows", "wheels", "mirrors", "roof", "doors")
END_PARTS = ("windows", "lights", "mirrors", "roof")
VISIBLE_PARTS = {"side_left": SIDE_PARTS, "side_right": SIDE_PARTS,
                 "front": END_PARTS, "rear": END_PARTS}
PART_GRID = 24             # cells per side of the part grids (the real datasets' 24x24 convention)


def attribute_table() -> dict[str, Any]:
    """The vocabulary (for meta.json and documentation)."""
    return {"types": list(TYPES), "colours": list(BODY_COLOURS),
            "parts": {c: {a: list(v) for a, v in attrs.items()} for c, attrs in PART_ATTRIBUTES.items()},
            "visible_parts": {v: list(c) for v, c in VISIBLE_PARTS.items()}, "part_grid": PART_GRID}
