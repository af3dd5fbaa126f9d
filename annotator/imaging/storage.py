"""Stored voxel format: gzip of raw little-endian C-order bytes (docs/ARCHITECTURE.md, "Stored files").

The browser inflates the same bytes natively (``Content-Encoding: gzip``), so nothing here may add a
header or change the byte order: ``encode_array`` is exactly ``gzip(array.astype('<dtype').tobytes('C'))``.
"""

from __future__ import annotations

import gzip

import numpy as np

# Dtypes the viewer understands; everything else is converted at import time.
STORAGE_DTYPES: tuple[str, ...] = ("uint8", "int16", "uint16", "float32")

# Level 6 is zlib's default: level 9 costs ~3x the time on CT for ~2 % smaller files.
_GZIP_LEVEL = 6


def _integer_values_fit(array: np.ndarray, dtype: type[np.integer]) -> bool:
    if array.size == 0:
        return True
    info = np.iinfo(dtype)
    return bool(array.min() >= info.min and array.max() <= info.max)


def to_storage_dtype(array: np.ndarray) -> np.ndarray:
    """Convert voxels to one of ``STORAGE_DTYPES`` without losing values where possible.

    Rules: uint8/int16/uint16/float32 are kept; bool -> uint8; int8 -> int16; other integer types -> int16
    if every value fits, else uint16 if every value fits, else float32; float16/float64 -> float32
    (float64 is never kept). Shape and C order are preserved (a C-contiguous copy is returned when needed).

    Arguments:
        array: any-shape numeric array (the canonical volume is ``(Z, Y, X)``).
    Returns:
        C-contiguous array in a storage dtype.
    """
    dtype = array.dtype
    if dtype.name in STORAGE_DTYPES:
        converted = array
    elif dtype == np.bool_:
        converted = array.astype(np.uint8)
    elif np.issubdtype(dtype, np.integer):
        if _integer_values_fit(array, np.int16):
            converted = array.astype(np.int16)
        elif _integer_values_fit(array, np.uint16):
            converted = array.astype(np.uint16)
        else:
            converted = array.astype(np.float32)
    elif np.issubdtype(dtype, np.floating):
        converted = array.astype(np.float32)
    else:
        raise TypeError(f"cannot store voxels of dtype {dtype}")
    # Native byte order matters: a big-endian array from a NIfTI/NRRD file would otherwise leak through.
    if converted.dtype.byteorder == ">":
        converted = converted.astype(converted.dtype.newbyteorder("="))
    return np.ascontiguousarray(converted)


def encode_array(array: np.ndarray) -> bytes:
    """gzip of the raw little-endian C-order bytes of ``array`` (must already be a storage dtype)."""
    if array.dtype.name not in STORAGE_DTYPES:
        raise TypeError(
            f"encode_array needs one of {STORAGE_DTYPES}, got {array.dtype}; call to_storage_dtype"
        )
    little_endian = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    # mtime=0 keeps the bytes deterministic, so the same volume always gets the same ETag.
    return gzip.compress(little_endian.tobytes(order="C"), compresslevel=_GZIP_LEVEL, mtime=0)


def decode_array(data: bytes, shape: tuple[int, int, int], dtype: str) -> np.ndarray:
    """Inverse of ``encode_array``: a writable ``shape`` array (usually ``(Z, Y, X)``) of ``dtype``.

    Raises ValueError when the inflated byte count does not match ``shape`` and ``dtype``.
    """
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"unknown stored dtype {dtype!r}; expected one of {STORAGE_DTYPES}")
    raw = gzip.decompress(data)
    little_endian = np.dtype(dtype).newbyteorder("<")
    expected = int(np.prod(shape)) * little_endian.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"stored voxels hold {len(raw)} bytes, shape {tuple(shape)} {dtype} needs {expected}"
        )
    return np.frombuffer(raw, dtype=little_endian).astype(np.dtype(dtype), copy=True).reshape(shape)


def intensity_stats(array: np.ndarray) -> dict[str, float]:
    """Summary intensities for default window/level: ``{min, max, mean, std, p0_5, p99_5}`` as floats.

    Percentiles use a deterministic strided subsample above ~4 M voxels: exact enough for windowing and
    keeps a 512x512x600 CT well under a second.
    """
    if array.size == 0:
        raise ValueError("intensity_stats of an empty array")
    flat = array.reshape(-1)
    sample_limit = 4_000_000
    sample = flat[:: max(1, flat.size // sample_limit)]
    p0_5, p99_5 = np.percentile(sample, [0.5, 99.5])
    return {
        "min": float(flat.min()),
        "max": float(flat.max()),
        "mean": float(flat.mean(dtype=np.float64)),
        "std": float(flat.std(dtype=np.float64)),
        "p0_5": float(p0_5),
        "p99_5": float(p99_5),
    }
