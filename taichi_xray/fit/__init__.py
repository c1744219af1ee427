"""Fitting toolkit: image similarity losses, registration/shape metrics, statistical shape models.

* :mod:`taichi_xray.fit.losses` - NGC (Penney 1998), NCC, multiscale / patch NGC, MSE (torch).
* :mod:`taichi_xray.fit.metrics` - surface distances, landmark / pose / target registration errors (numpy).
* :mod:`taichi_xray.fit.ssm` - PCA statistical shape model and synthetic populations.
* :mod:`taichi_xray.fit.register` - rigid / shape registration of meshes to X-ray images (torch, Adam, coarse to fine).
* :mod:`taichi_xray.fit.scene_register` - registration of scene objects to X-ray files (`taichi-xray register`).
* :mod:`taichi_xray.fit.degrade` - fluoroscopy degradation (shutters, wire, scatter, blur, noise) for experiments.
* :mod:`taichi_xray.fit.tet_register` - pose and density coefficients of tetrahedral shape-density models.
* :mod:`taichi_xray.fit.taichi_fit` - the pose loss and Adam on Taichi's tape (no torch).
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
from .register import (RegistrationResult, default_centre, downsample_camera, register, render_posed,  # noqa: E402
                       volume_centroid, volume_pose)

__all__ += ["register", "RegistrationResult", "downsample_camera", "render_posed", "volume_pose", "volume_centroid",
            "default_centre",
            "pelvis_landmarks", "PelvisLandmarks", "PELVIS_LANDMARK_NAMES"]

# masks and robust losses, registration of scene objects to X-ray files, fluoroscopy
# degradation, tetrahedral shape-density models, and the Taichi-tape pose loss
from .losses import erode_mask, gaussian_blur, masked_blur, pool_mask, robust_ngc, robust_ngc_loss  # noqa: E402
from .degrade import Degraded, degrade  # noqa: E402
from .scene_register import (  # noqa: E402
    SceneRegistration,
    Target,
    collimator_mask,
    load_target,
    load_targets,
    register_scene,
    write_registration,
)
from .tet_register import (  # noqa: E402
    DEFAULT_TET_SCHEDULE,
    TetRegistrationResult,
    register_tet_model,
    tet_model_pipeline,
)

__all__ += ["robust_ngc", "robust_ngc_loss", "pool_mask", "erode_mask", "gaussian_blur", "masked_blur",
            "degrade", "Degraded", "register_scene", "SceneRegistration", "Target", "load_target", "load_targets",
            "collimator_mask", "write_registration",
            "register_tet_model", "tet_model_pipeline", "TetRegistrationResult", "DEFAULT_TET_SCHEDULE"]
