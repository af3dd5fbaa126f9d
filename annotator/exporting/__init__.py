"""Export layer (pure Python, no Django): nnU-Net v2 raw data sets, NIfTI label maps, DICOM SEG, ZIP.

Services build ``ExportCase`` / ``LabelSpec`` values from their models and call the writers; every writer
raises ``ExportError`` with a message meant for the user when the input cannot be exported.
"""

from .archive import zip_directory
from .dicom_seg import write_dicom_seg
from .nifti import write_case_label_nifti
from .nnunet import write_nnunet_dataset
from .types import ExportCase, ExportError, LabelSpec, sanitize_identifier

__all__ = [
    "ExportCase",
    "ExportError",
    "LabelSpec",
    "sanitize_identifier",
    "write_case_label_nifti",
    "write_dicom_seg",
    "write_nnunet_dataset",
    "zip_directory",
]
