"""Input and output of X-ray images: DICOM (XA, RF, DX, CR; read with geometry, write DRRs), PNG/TIFF/NPY
with a projection matrix beside them. See docs/xray-images.md."""
from .xray import XRayImage, detect_polarity, read_xray, shutter_mask, sidecar_path
from .dicom import DicomTagError, carm_parameters, write_dicom

__all__ = ["XRayImage", "read_xray", "shutter_mask", "detect_polarity", "sidecar_path", "write_dicom",
           "carm_parameters", "DicomTagError"]
