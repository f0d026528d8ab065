"""A folder of realistic JPEGs, so the input-pipeline benchmark and tests run anywhere.

``make_jpegs`` (or the command ``mochi-jpegs DIR --n 5000``, ``pretrain/jpegs.py``) writes
``DIR/train/<class>/*.JPEG`` (an ImageFolder, like ImageNet's) of photo-like images: colour fields
with a 1/f^2 power spectrum (the statistics of natural images, which sets how hard they are to
compress and decode), soft shapes and sensor grain, at ImageNet's
typical sizes (mostly 500 x 375 / 375 x 500 / 500 x 333, some smaller, a few larger) and qualities
75-95 with 4:2:0 chroma subsampling. ``--odd`` adds the files real collections hold and nvjpeg
rejects: progressive, CMYK and grayscale JPEGs, a PNG named .JPEG (ImageNet has one) and a truncated
file.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from ..run.errors import UserError


log = logging.getLogger(__name__)

# (width, height) and weight: ImageNet's train set is dominated by 500-pixel-wide landscape photos.
SIZES = [((500, 375), 0.45), ((375, 500), 0.15), ((500, 333), 0.15), ((333, 500), 0.05)]
ODD = ("progressive", "cmyk", "grayscale", "png", "truncated")


def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3]: a 1/f^2 colour field with soft ellipses and grain."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    f = np.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0
    channels = []
    mix = rng.normal(size=(3, 3)) * 0.4 + np.eye(3)  # correlated channels, as in photos
    base = []
    for _ in range(3):
        spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f
        spec[0, 0] = 0
        field = np.fft.irfft2(spec, s=(height, width))
        base.append(field / (field.std() + 1e-9))
    base = np.stack(base, -1) @ mix.T
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(rng.integers(2, 6)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.05, 0.4) * height, rng.uniform(0.05, 0.4) * width
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        alpha = 1 / (1 + np.exp(np.minimum(8 * (inside - 1), 50)))
        base = base * (1 - alpha[..., None]) + alpha[..., None] * rng.normal(size=3) * 1.5
    for c in range(3):
        channels.append(base[..., c] * rng.uniform(30, 60) + rng.uniform(70, 180))
    img = np.stack(channels, -1) + rng.normal(scale=rng.uniform(2, 6), size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    u = rng.uniform()
    for size, weight in SIZES:
        if u < weight:
            return size
        u -= weight
    if u < 0.15:  # smaller photos, any aspect
        w = int(rng.uniform(150, 500))
        return w, int(np.clip(w / np.exp(rng.uniform(-0.7, 0.7)), 100, 500))
    w = int(rng.uniform(600, 1200))  # a few large ones
    return w, int(w * rng.uniform(0.6, 0.8))


def encode(img: np.ndarray, quality: int, kind: str = "baseline") -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(img)
    if kind == "png":
        im.save(buf, "PNG")
    elif kind == "cmyk":
        im.convert("CMYK").save(buf, "JPEG", quality=quality)
    elif kind == "grayscale":
        im.convert("L").save(buf, "JPEG", quality=quality)
    else:
        im.save(buf, "JPEG", quality=quality, progressive=kind == "progressive")
    data = buf.getvalue()
    return data[: len(data) // 3] if kind == "truncated" else data


def make_jpegs(folder: str | Path, n: int, classes: int = 10, seed: int = 0, odd: bool = False) -> Path:
    """Write n photo-like JPEGs in ``classes`` class folders under folder/train; returns folder."""
    if n <= 0 or classes <= 0:
        raise UserError(f"--n and --classes must be > 0, got {n} and {classes}")
    root = Path(folder) / "train"
    rng = np.random.default_rng(seed)
    for k in range(n):
        cls = root / f"class{k % classes:03d}"
        cls.mkdir(parents=True, exist_ok=True)
        w, h = image_size(rng)
        data = encode(photo(rng, w, h), int(rng.integers(75, 96)))
        (cls / f"img{k:06d}.JPEG").write_bytes(data)
    if odd:
        for j, kind in enumerate(ODD):
            data = encode(photo(rng, 320, 240), 90, kind)
            (root / f"class{j % classes:03d}" / f"odd_{kind}.JPEG").write_bytes(data)
    return Path(folder)
