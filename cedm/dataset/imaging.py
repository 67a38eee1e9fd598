"""Image conversion shared by every importer: any PIL mode -> RGB on white, EXIF-upright, square, resized."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

WHITE = (255, 255, 255)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any mode to RGB: transparency composited onto white, 16-bit scaled to 8-bit, CMYK converted."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        img = Image.fromarray(((a - lo) / (hi - lo or 1.0) * 255.0 + 0.5).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def square_resize(img: Image.Image, resolution: int) -> np.ndarray:
    """Center-crop to a square and resize (Lanczos; reduces first when shrinking a lot); uint8 (R, R, 3)."""
    img = to_rgb(img)
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != resolution:
        img = img.resize((resolution, resolution), Image.LANCZOS, reducing_gap=3.0 if s > 2 * resolution else None)
    return np.asarray(img, dtype=np.uint8)
