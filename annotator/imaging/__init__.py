"""Medical image import layer (pure Python, no Django): DICOM / NIfTI / NRRD readers, safe archives,
label alignment, the stored voxel codec, slice thumbnails, label export and demo data.

Geometry contract (docs/ARCHITECTURE.md): arrays ``(Z, Y, X)``, spacing ``(sz, sy, sx)`` mm, affine maps
``(z, y, x, 1)`` to world RAS+ mm.
"""

from .demo import DemoCase, prepare_demo_cases
from .labels import align_label
from .nifti import write_label_nifti
from .render import render_slice_png
from .storage import decode_array, encode_array, intensity_stats, to_storage_dtype
from .types import ERROR_CODES, FileError, ImportLimits, LoadedVolume, UploadResult, VolumeImportError
from .upload import read_upload

__all__ = [
    "ERROR_CODES",
    "DemoCase",
    "FileError",
    "ImportLimits",
    "LoadedVolume",
    "UploadResult",
    "VolumeImportError",
    "align_label",
    "decode_array",
    "encode_array",
    "intensity_stats",
    "prepare_demo_cases",
    "read_upload",
    "render_slice_png",
    "to_storage_dtype",
    "write_label_nifti",
]
