"""The six part categories of PFCVR, in the order every part tensor and file uses.

The one home of the tuple: part masks and boxes (``[.., 6, ..]`` tensors), ``parts.json``, the
manifest's ``parts``, the part decoder's queries and the figures all index parts in this order.
"""
from __future__ import annotations

PART_CATEGORIES = ("windows", "lights", "wheels", "mirrors", "roof", "doors")
