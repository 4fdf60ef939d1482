"""Published text-to-image results of PFCVR and its baselines (README of the official code).

These are numbers measured by the paper's authors on the real T2I-VeRI / T2I-VeRW benchmarks with a
pretrained CLIP ViT-B/16, not by this project. The report prints them for orientation only, clearly
labelled: they are not comparable with results on the embedded synthetic benchmark.
"""
from __future__ import annotations

# method: (R1, R5, R10, mAP)
T2I_VERI = {
    "IRRA": (25.1, 57.8, 72.4, 23.7),
    "MCANet": (25.1, 54.7, 69.1, 18.1),
    "MARS": (25.5, 54.3, 67.6, 24.9),
    "PFCVR": (29.2, 60.1, 75.4, 25.3),
}
T2I_VERW = {
    "IRRA": (47.3, 75.6, 85.3, 22.8),
    "VFE-TPS": (53.7, 82.0, 89.7, 24.4),
    "MARS": (52.8, 78.9, 86.3, 25.2),
    "PFCVR": (55.2, 82.8, 90.3, 26.2),
}
PUBLISHED = {"T2I-VeRI": T2I_VERI, "T2I-VeRW": T2I_VERW}


def published_markdown() -> str:
    """The published tables as markdown, one per dataset."""
    lines = []
    for dataset, table in PUBLISHED.items():
        lines += [f"**{dataset}** (published by the PFCVR authors; real data, pretrained CLIP ViT-B/16)",
                  "", "| method | R1 | R5 | R10 | mAP |", "|---|---|---|---|---|"]
        lines += [f"| {m} | " + " | ".join(f"{v:.1f}" for v in vals) + " |"
                  for m, vals in table.items()]
        lines.append("")
    return "\n".join(lines)
