"""High-bit-depth images (16-bit, 32-bit integer, float) to 8 bits before decoding goes on.

Why: PIL's own conversion of these modes to L/RGB clips every value above 255, so a 16-bit scan
decodes nearly white and a [0, 1] float image nearly black. The mappings here are fixed per file
type, not per image, wherever the type allows it, so equal exposures stay equal across the dataset.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

UINT16_TO_8 = 257  # 65535 / 257 = 255 exactly: the whole 16-bit range onto the whole 8-bit range
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_8bit(img: Image.Image) -> Image.Image:
    """`img` unchanged if PIL converts it faithfully, else an 8-bit 'L' image of it; ValueError (with
    the reason) when the pixels have no meaningful 8-bit form.

    16-bit: divided by 257 rather than stretched by the image's own min/max: the division is the same
    linear map for every file, so a dark image stays dark and brightness means the same in every
    image; a per-image stretch would amplify the noise of near-black images and make intensities
    incomparable (methods that want it, like RAD-DINO's min-max, apply it on the device). 32-bit
    integers are taken as 16-bit when they fit 0..65535 (PIL opens some 16-bit files as mode I).
    Float: values within [0, 1] are intensities and scale by 255; other ranges have no fixed meaning,
    so each image is min-max scaled.
    """
    if img.mode not in HIGH_BIT_MODES:
        return img
    arr = np.asarray(img)
    if img.mode == "F":
        if not np.isfinite(arr).all():
            raise ValueError("float image with NaN or infinite pixels")
        lo, hi = float(arr.min()), float(arr.max())
        unit = arr if lo >= 0.0 and hi <= 1.0 else (arr - lo) / max(hi - lo, np.finfo(np.float32).tiny)
        scaled = unit * 255.0
    else:
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"32-bit integer pixels span {arr.min()}..{arr.max()}, outside 16 bits (0..65535); "
                             "convert the file to 8 or 16 bits")
        scaled = arr / UINT16_TO_8
    return Image.fromarray(np.rint(scaled).astype(np.uint8))  # mode L
