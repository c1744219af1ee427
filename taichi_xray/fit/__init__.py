"""Fitting toolkit: image similarity losses, registration/shape metrics, statistical shape models.

* :mod:`taichi_xray.fit.losses` - NGC (Penney 1998), NCC, multiscale / patch NGC, MSE (torch).
* :mod:`taichi_xray.fit.metrics` - surface distances, landmark / pose / target registration errors (numpy).
* :mod:`taichi_xray.fit.ssm` - PCA statistical shape model and synthetic populations.
"""
from .losses import (
    mse,
    multiscale_ngc,
    multiscale_ngc_loss,
    ncc,
    ncc_loss,
    ngc,
    ngc_loss,
    patch_ngc,
    patch_ngc_loss,
)
from .metrics import (
    landmark_error,
    pose_errors,
    rotation_error_deg,
    surface_distances,
    target_registration_error,
)
from .ssm import ShapeModel, SyntheticPopulation, synthetic_population

__all__ = [
    "mse", "ncc", "ncc_loss", "ngc", "ngc_loss", "multiscale_ngc", "multiscale_ngc_loss",
    "patch_ngc", "patch_ngc_loss",
    "surface_distances", "landmark_error", "pose_errors", "rotation_error_deg", "target_registration_error",
    "ShapeModel", "SyntheticPopulation", "synthetic_population",
]

# registration and landmarks (appended; see docs/registration.md)
from .landmarks import PELVIS_LANDMARK_NAMES, PelvisLandmarks, pelvis_landmarks  # noqa: E402
from .register import RegistrationResult, downsample_camera, register, render_posed  # noqa: E402

__all__ += ["register", "RegistrationResult", "downsample_camera", "render_posed",
            "pelvis_landmarks", "PelvisLandmarks", "PELVIS_LANDMARK_NAMES"]
