"""Image writers.  None of them overwrites an existing file unless ``overwrite=True``.

Images are 2-D arrays indexed [row, column] (numpy or torch; torch is moved to the CPU).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _target(path, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    if not path.parent.exists():
        raise FileNotFoundError(f"directory {path.parent} does not exist")
    return path


def _array(image) -> np.ndarray:
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    return np.asarray(image)


def _image2d(image) -> np.ndarray:
    a = _array(image)
    if a.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {a.shape}")
    if a.size == 0:
        raise ValueError("image is empty")
    return a


def robust_window(image, percentiles=(0.5, 99.5)) -> tuple[float, float]:
    """(lo, hi) at the given percentiles of the finite pixels."""
    a = _image2d(image).astype(np.float64)
    f = a[np.isfinite(a)]
    if f.size == 0:
        raise ValueError("image has no finite pixel")
    lo, hi = np.percentile(f, percentiles)
    return float(lo), float(hi)


def to_uint(image, bits: int = 8, window=None, invert: bool = False) -> np.ndarray:
    """Map an image to uint8/uint16: window (lo, hi) -> [0, 2**bits - 1], clipped.

    window None -> robust 0.5..99.5 percentile window.  NaN maps to 0.  A flat window
    (lo == hi) maps everything to 0.
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    a = _image2d(image).astype(np.float64)
    lo, hi = robust_window(a) if window is None else (float(window[0]), float(window[1]))
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < lo:
        raise ValueError(f"bad window ({lo}, {hi})")
    top = 2**bits - 1
    scale = top / (hi - lo) if hi > lo else 0.0
    x = np.clip((a - lo) * scale, 0, top)
    x = np.nan_to_num(x, nan=0.0)
    if invert:
        x = top - x
    return np.rint(x).astype(np.uint8 if bits == 8 else np.uint16)


def save_png(path, image, bits: int = 8, window=None, invert: bool = False,
             overwrite: bool = False) -> Path:
    """Grey PNG, 8 or 16 bit.  An integer image already in range with window=None is not rescaled
    when its dtype matches ``bits`` (uint8 for 8, uint16 for 16)."""
    from PIL import Image

    path = _target(path, overwrite)
    a = _image2d(image)
    if window is None and not invert and a.dtype == (np.uint8 if bits == 8 else np.uint16):
        u = a
    else:
        u = to_uint(a, bits, window, invert)
    if bits == 8:
        Image.fromarray(np.ascontiguousarray(u), mode="L").save(path, format="PNG")
    else:
        img = Image.new("I;16", (u.shape[1], u.shape[0]))
        img.frombytes(np.ascontiguousarray(u.astype("<u2")).tobytes())
        img.save(path, format="PNG")
    return path


def read_png(path) -> np.ndarray:
    """Read a grey PNG back as uint8 or uint16 (for tests and tools)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I"):
            return np.asarray(im, dtype=np.int64).astype(np.uint16)
        return np.asarray(im.convert("L"))


def save_npy(path, array, overwrite: bool = False) -> Path:
    path = _target(path, overwrite)
    with open(path, "wb") as f:
        np.save(f, _array(array))
    return path


def save_tiff(path, image, overwrite: bool = False) -> Path:
    """float32 TIFF via tifffile (2-D or a stack)."""
    import tifffile

    path = _target(path, overwrite)
    a = _array(image).astype(np.float32)
    tifffile.imwrite(path, a)
    return path


def save_projection_matrix(path, P, overwrite: bool = False, comment: str = "") -> Path:
    """3x4 projection matrix as text, one row per line, with a '#' header comment."""
    path = _target(path, overwrite)
    M = np.asarray(_array(P), dtype=np.float64)
    if M.shape != (3, 4):
        raise ValueError(f"projection matrix must be 3x4, got {M.shape}")
    if not np.isfinite(M).all():
        raise ValueError("projection matrix contains NaN or infinity")
    header = ("3x4 projection matrix P (pixel coords [u, v, 1]^T ~ P [x, y, z, 1]^T, mm; "
              "u = column, v = row)")
    if comment:
        header += "\n" + comment
    np.savetxt(path, M, fmt="%.17g", header=header, comments="# ")
    return path


def load_projection_matrix(path) -> np.ndarray:
    M = np.loadtxt(path, comments="#")
    if M.shape != (3, 4):
        raise ValueError(f"{path}: expected a 3x4 matrix, got {M.shape}")
    return M
