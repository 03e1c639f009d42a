"""How much each original is enlarged or reduced to the study size (not a leak: a warning)."""
from __future__ import annotations

import numpy as np

SCALE_WARN = 2.0  # warn when an image is enlarged or reduced more than this factor
SCALE_LIST = 10   # how many of the worst to list


def scaling_check(originals: list[tuple[str, int | None, int | None]], size: int, *,
                  warn: float = SCALE_WARN, top: int = SCALE_LIST) -> dict:
    """How much each image is scaled to the stimulus side `size` (factor = size /
    longest original side): counts of images enlarged or reduced more than `warn`×, and
    the worst ones (label, original size, factor), largest distortion first. A quality
    warning, not a leak flag: readers see enlarged images blurred and reduced ones
    without their native detail."""
    rows = []
    for label, w, h in originals:
        if not w or not h:
            continue
        factor = size / max(w, h)
        rows.append({"case": label, "width": int(w), "height": int(h), "factor": factor})
    up = [r for r in rows if r["factor"] > warn]
    down = [r for r in rows if r["factor"] < 1 / warn]
    worst = sorted(up + down, key=lambda r: -abs(np.log(r["factor"])))[:top]
    return {"size": size, "warn_factor": warn, "n_images": len(rows),
            "n_upscaled": len(up), "n_downscaled": len(down), "worst": worst}


def format_scaling(check: dict) -> str:
    """The scaling check as text lines for the audit report ("" when nothing to say)."""
    if not check.get("n_upscaled") and not check.get("n_downscaled"):
        return ""
    w = check["warn_factor"]
    lines = [f"Scaling: {check['n_upscaled']} of {check['n_images']} images enlarged more than "
             f"{w:g}x and {check['n_downscaled']} reduced more than {w:g}x to "
             f"{check['size']}x{check['size']}. Worst:"]
    for r in check["worst"]:
        verb = "enlarged" if r["factor"] > 1 else "reduced"
        lines.append(f"  {r['case']}: {r['width']}x{r['height']} {verb} "
                     f"{max(r['factor'], 1 / r['factor']):.1f}x")
    return "\n".join(lines)
