"""Read one mammogram (DICOM via pydicom, or PNG) and turn it into a small, normalised, oriented array.

pydicom is an optional dependency (``pip install 'dynamics[dicom]'``), imported only when a DICOM file is
read. Every failure raises :class:`ImageReadError` naming the file, so callers can name the exam.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class ImageReadError(RuntimeError):
    """A file that cannot be read or decoded as an image."""


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:  # optional extra
        raise ImportError("reading DICOM needs pydicom>=3: pip install 'dynamics[dicom]' (or pydicom)") from exc
    return pydicom


def dicom_laterality(path: str | Path) -> str | None:
    """'L'/'R' from the DICOM header (ImageLaterality, else Laterality), or None if absent."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise ImageReadError(f"{path}: not a readable DICOM file ({exc})") from exc
    for key in ("ImageLaterality", "Laterality"):
        value = str(ds.get(key, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return None


def read_pixels(path: str | Path) -> np.ndarray:
    """The raw image as float32 with bright = dense (MONOCHROME1 is inverted)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
            from PIL import Image
            with Image.open(path) as im:
                a = np.asarray(im.convert("I;16") if im.mode not in ("L", "I", "I;16", "F") else im, dtype=np.float32)
            return a if a.ndim == 2 else a.mean(axis=2)
        pydicom = _pydicom()
        ds = pydicom.dcmread(path)
        a = ds.pixel_array.astype(np.float32)
        if str(ds.get("PhotometricInterpretation", "MONOCHROME2")) == "MONOCHROME1":
            a = a.max() - a
        return a
    except ImportError:
        raise
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def prepare(a: np.ndarray, size: int, threshold: float = 0.05) -> np.ndarray:
    """Crop to the breast, put the chest wall on the left, resize to ``size`` x ``size``, scale to [0, 1].

    The breast is the bounding box of pixels above ``threshold`` of the 99.5th percentile (film labels and
    edges are small next to it); orientation: the brighter half goes left, so both breasts face one way.
    """
    if a.ndim != 2 or min(a.shape) < 8:
        raise ImageReadError(f"expected a 2-D image, got shape {a.shape}")
    hi = float(np.percentile(a[:: 8, :: 8], 99.5)) or 1.0
    a = np.clip(a / hi, 0, 1)
    mask = a > threshold
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size and cols.size:
        a = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    half = a.shape[1] // 2
    if a[:, half:].sum() > a[:, :half].sum():
        a = a[:, ::-1]
    t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    return F.interpolate(t, size=(size, size), mode="area")[0, 0].numpy()


def load_image(path: str | Path, size: int) -> np.ndarray:
    """:func:`read_pixels` then :func:`prepare`."""
    return prepare(read_pixels(path), size)
