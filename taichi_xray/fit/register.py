"""2D/3D registration of meshes to X-ray images by gradient descent.

:func:`register` fits a rigid pose (and optionally the coefficients of a
:class:`~taichi_xray.fit.ssm.ShapeModel`) so that the rendered images of P
meshes match V target images (one per camera of the renderer) under an image
similarity loss (default: NGC, Penney et al. 1998).

Parametrisation
---------------
* pose: ``v' = R(rotvec) (v - centre) + centre + t``; ``rotvec`` (3,) rad,
  ``t`` (3,) mm, ``centre`` (3,) mm fixed (default: the template's vertex
  centroid, which decouples rotation from translation). Internally the
  optimiser sees the rotation vector in **degrees** and the translation in
  **mm**, so one learning rate serves both (1 deg moves a point 150 mm from the
  centre by 2.6 mm); shape coefficients ``beta`` are in units of standard
  deviations.
* shape: ``v(beta) = shape_model.vertices(beta)`` (N, 3), split into the P
  meshes in order (N = sum of the meshes' vertex counts); the loss gets
  ``prior_weight * 0.5 * |beta|^2`` (the Mahalanobis prior).

Multi-resolution
----------------
``schedule`` is a list of levels ``(factor, iterations, lr)``. At ``factor``
s > 1 the target is **average-pooled** by s x s, and when the renderer is an
:class:`~taichi_xray.torch.XRayRenderer` the model image is **rendered on a
downsampled detector** (:func:`downsample_camera`: the same geometry with
s x s larger pixels whose centres coincide with the pooled pixels' centres),
which makes coarse levels about s^2 times cheaper; this holds with
``moving=`` too (the fixed objects are handed to the renderer unchanged). For
any other callable the model image is rendered at full size and
average-pooled. (The downsampled rendering point-samples one ray per coarse
pixel where the pooled target averages s^2 rays; NGC's Sobel gradients are
insensitive to that slight difference in blur.)

Masks
-----
``mask`` (H, W) or (V, H, W) marks the usable target pixels (1/True: usable;
weights in [0, 1] allowed). At every level, the factor included,
:func:`~taichi_xray.fit.losses.pool_mask` turns it into the weights the loss
sees: **min-pooled** (a coarse pixel is valid only if all its s x s fine
pixels are, with the smallest of their weights) and then **eroded by one
pixel** (3 x 3 minimum), so that no 3 x 3 Sobel stencil centred on a pixel of
positive weight reaches a pixel outside the valid region. Whatever the target
holds outside the mask (collimator shutters, labels) then changes neither the
loss nor its gradient at any level. (Average pooling, as before 2026-12,
let the blades' edges leak into the coarse levels.)

Moving objects
--------------
``moving`` (indices, or names with ``names=`` or an XRayRenderer's names)
selects the objects that are posed, as one rigid body; the others are
rendered where ``vertices`` puts them.

CT volumes (an XRayRenderer's ``volumes``, or ``volumes=`` with a callable
that takes ``volume_poses=``) can move too: name them in ``moving`` (index
``P + k`` for volume k, P the number of meshes, as in ``Scene.parents``).
All moving objects move as ONE body, ``x' = R (x - c) + c + t``. The renderer
poses a volume about its own box centre ``c_v`` (``Volume.centre``), so volume
k gets the equivalent pose ``(rotvec, t_v)`` with

    R (x - c) + c + t = R (x - c_v) + c_v + t_v,   t_v = t + (R - I)(c_v - c)

(:func:`volume_pose`, in torch: the gradients reach ``rotvec`` and ``t``).

Rotation centre (default): with a moving volume, the mean of the moving
volumes' **body centroids** (:func:`volume_centroid`: the centroid of the
voxels above -500 HU, i.e. not air; the box centre when there are none) --
meshes moving with the volumes do not change it; without one, the vertex
centroid of the moving meshes (as before). The body centroid rather than the
box centre: a CT's box holds air and the table, and the body can sit tens of
mm off its centre, where the rotation would couple with the translation.

Optimisers
----------
``"adam"``: ``torch.optim.Adam`` with the level's lr (deg / mm / std per
step, roughly). ``"lbfgs"``: ``torch.optim.LBFGS`` with a strong-Wolfe line
search, one L-BFGS iteration per recorded iteration (several function
evaluations each; ``n_evaluations`` counts them), ``lr`` is its initial step
(1 is usual). Early stopping: a level ends when its loss has not improved by
more than ``min_delta`` for ``patience`` iterations; each level returns the
best parameters it has seen, which start the next level.

Multi-start
-----------
``n_starts`` runs: start 0 from ``init_pose``, start k > 0 from ``init_pose``
perturbed by a seeded uniform offset in ``[-start_rot_deg, start_rot_deg]``
per rotation-vector component and ``[-start_trans_mm, start_trans_mm]`` per
translation component. The start with the lowest final loss wins. With
``select_after=k`` every start runs only the first k levels, and only the best
continues with the remaining levels (cheaper).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..camera import Camera
from ..pose import RigidPose, axis_angle_to_matrix
from . import losses as _losses

__all__ = ["register", "RegistrationResult", "downsample_camera", "render_posed", "LOSSES", "resolve_moving",
           "volume_pose", "volume_centroid", "default_centre", "AIR_HU"]

_DEG = math.pi / 180.0
AIR_HU = -500.0  # voxels at or below this are air for volume_centroid

LOSSES: dict[str, Callable] = {
    "ngc": lambda a, b, m: _losses.ngc_loss(a, b, mask=m),
    "multiscale_ngc": lambda a, b, m: _losses.multiscale_ngc_loss(a, b, levels=min(3, _max_levels(a)), mask=m),
    "patch_ngc": lambda a, b, m: _losses.patch_ngc_loss(a, b, patch_size=max(3, min(a.shape[-2:]) // 4 - 2), mask=m),
    "ncc": lambda a, b, m: _losses.ncc_loss(a, b, mask=m),
    "mse": lambda a, b, m: _losses.mse(a, b, mask=m),
    "robust_ngc": lambda a, b, m: _losses.robust_ngc_loss(a, b, mask=m),
}


def _max_levels(a: torch.Tensor) -> int:
    n, s = 1, min(a.shape[-2:])
    while s // 2 ** n >= 8:
        n += 1
    return n


@dataclass
class RegistrationResult:
    """Outcome of :func:`register`.

    rotvec : (3,) float64, rad.  translation : (3,) float64, mm.
    centre : (3,) float64, mm (pose is ``R (v - centre) + centre + t``).
    beta : (K,) float64 shape coefficients (std units) or None (pose only).
    loss : final loss of the returned parameters (last level, incl. prior).
    loss_history : (n_iterations,) loss per iteration, all levels of the winning start.
    param_history : (n_iterations, 6 [+K]) parameters at which each loss was
        evaluated: rotvec in **degrees**, translation mm [, beta].
    level_history : (n_iterations,) schedule level index of each iteration.
    time_s : wall time of the whole call (all starts), s.
    n_iterations : iterations of the winning start.  n_evaluations : loss
        evaluations of all starts (L-BFGS line searches evaluate several times).
    start : index of the winning start; start_losses : final loss of every start
        (NaN for starts dropped by ``select_after``); start_poses : (n_starts, 6)
        initial rotvec (deg) and translation of every start.
    stopped_early : whether any level of the winning start ended by early stopping.
    level_losses : (n_levels,) best loss of each schedule level of the winning start (NaN for
        levels it did not run). moving : indices of the posed objects (``P + k`` for volume k).
    """

    rotvec: np.ndarray
    translation: np.ndarray
    centre: np.ndarray
    beta: Optional[np.ndarray]
    loss: float
    loss_history: np.ndarray
    param_history: np.ndarray
    level_history: np.ndarray
    time_s: float
    n_iterations: int
    n_evaluations: int
    start: int = 0
    start_losses: np.ndarray = field(default_factory=lambda: np.zeros(0))
    start_poses: np.ndarray = field(default_factory=lambda: np.zeros((0, 6)))
    stopped_early: bool = False
    level_losses: np.ndarray = field(default_factory=lambda: np.zeros(0))
    moving: tuple = ()

    @property
    def rotvec_deg(self) -> np.ndarray:
        return self.rotvec / _DEG

    @property
    def matrix(self) -> np.ndarray:
        """Rotation matrix (3, 3)."""
        return axis_angle_to_matrix(torch.as_tensor(self.rotvec, dtype=torch.float64)).numpy()

    @property
    def pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(rotvec rad (3,), translation mm (3,))."""
        return self.rotvec.copy(), self.translation.copy()

    def transform(self, points) -> np.ndarray:
        """Apply the registered pose to points (N, 3) mm -> (N, 3) float64."""
        p = np.asarray(points, dtype=np.float64)
        return (p - self.centre) @ self.matrix.T + self.centre + self.translation

    def to_rigid_pose(self, dtype=torch.float32) -> RigidPose:
        return RigidPose(self.rotvec_deg, self.translation, self.centre, dtype=dtype)


def downsample_camera(camera: Camera, factor: int) -> Camera:
    """The camera with ``factor`` x ``factor`` binned pixels.

    Pixel (r, c) of the result covers pixels ``factor*r .. factor*r + factor - 1``
    (rows; columns alike) of the original; its centre is their mean, so the
    image matches ``avg_pool2d(image, factor)`` (trailing rows/columns that do
    not fill a bin are dropped: size ``H // factor`` x ``W // factor``)."""
    if not isinstance(camera, Camera):
        raise TypeError(f"camera must be a Camera, got {type(camera).__name__}")
    s = int(factor)
    if s != factor or s < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    if s == 1:
        return camera
    H, W = camera.height // s, camera.width // s
    if H < 1 or W < 1:
        raise ValueError(f"factor {s} is larger than the detector ({camera.height}x{camera.width})")
    o = (s - 1) / 2.0
    A = np.array([[1.0 / s, 0.0, -o / s], [0.0, 1.0 / s, -o / s], [0.0, 0.0, 1.0]])
    ps = None if camera.pixel_spacing is None else camera.pixel_spacing * s
    return Camera.from_projection_matrix(A @ camera.P, W, H, ps)


def _pool(x: torch.Tensor, s: int) -> torch.Tensor:
    if s == 1:
        return x
    return F.avg_pool2d(x[:, None], s)[:, 0]


def _is_xray_renderer(r) -> bool:
    from ..torch.renderer import XRayRenderer

    return isinstance(r, XRayRenderer)


def _renderer_at(renderer, s: int):
    """(callable, needs_pooling) for level factor s."""
    if s == 1:
        return renderer, False
    if _is_xray_renderer(renderer):
        return renderer.at_scale(s), False
    return renderer, True


def _as_list_of_arrays(vertices, allow_empty: bool = False) -> list[np.ndarray]:
    if isinstance(vertices, (np.ndarray, torch.Tensor)) and np.ndim(vertices) == 2:
        vertices = [vertices]
    out = []
    for i, v in enumerate(vertices):
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(getattr(v, "vertices", v))
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 3:
            raise ValueError(f"vertices[{i}] must have shape (N, 3), got {a.shape}")
        out.append(a)
    if not out and not allow_empty:
        raise ValueError("no template vertices given")
    return out


def _init_pose(init_pose, centre):
    """-> (rotvec_deg (3,), translation (3,), centre or None) float64."""
    if init_pose is None:
        return np.zeros(3), np.zeros(3), centre
    if isinstance(init_pose, RigidPose):
        c = init_pose.centre.detach().cpu().numpy().astype(np.float64) if centre is None else centre
        return (init_pose.rotvec_deg.cpu().numpy().astype(np.float64),
                init_pose.translation_mm.cpu().numpy().astype(np.float64), c)
    if isinstance(init_pose, RegistrationResult):
        return init_pose.rotvec_deg.copy(), init_pose.translation.copy(), (init_pose.centre if centre is None else centre)
    try:
        rv, t = init_pose
    except (TypeError, ValueError):
        raise TypeError("init_pose must be a RigidPose, a RegistrationResult, None, or a pair "
                        "(rotvec_rad (3,), translation_mm (3,))") from None
    rv = np.asarray(rv.detach().cpu() if isinstance(rv, torch.Tensor) else rv, dtype=np.float64)
    t = np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t, dtype=np.float64)
    if rv.shape != (3,) or t.shape != (3,):
        raise ValueError(f"init_pose rotvec and translation must have shape (3,), got {rv.shape}, {t.shape}")
    return rv / _DEG, t, centre


def _check_schedule(schedule, H, W):
    if schedule is None:
        schedule = [(1, 100, 1.0)]
    out = []
    for i, lev in enumerate(schedule):
        try:
            s, n, lr = lev
        except (TypeError, ValueError):
            raise ValueError(f"schedule[{i}] must be (factor, iterations, lr), got {lev!r}") from None
        if int(s) != s or s < 1:
            raise ValueError(f"schedule[{i}]: factor must be a positive integer, got {s!r}")
        if int(n) != n or n < 0:
            raise ValueError(f"schedule[{i}]: iterations must be an integer >= 0, got {n!r}")
        if not lr > 0:
            raise ValueError(f"schedule[{i}]: lr must be > 0, got {lr!r}")
        if H // int(s) < 3 or W // int(s) < 3:
            raise ValueError(f"schedule[{i}]: factor {s} leaves less than 3x3 pixels of a {H}x{W} image")
        out.append((int(s), int(n), float(lr)))
    if not out:
        raise ValueError("schedule is empty")
    return out


def resolve_moving(moving, n_objects: int, names=None, volume_names=None) -> list[int]:
    """Indices of the moving objects: ``moving`` is None (all, volumes included), an int / name, or a sequence of
    ints / names (names need ``names``, the P object names). With ``volume_names`` (the volumes'
    names) volumes can be named too, or given as index ``P + k`` for volume k. Sorted, without
    duplicates."""
    vnames = list(volume_names or [])
    n_all = n_objects + len(vnames)
    if moving is None:
        return list(range(n_all))
    items = [moving] if isinstance(moving, (str, int, np.integer)) else list(moving)
    if not items:
        raise ValueError("moving is empty: name at least one object to pose")
    out = []
    for m in items:
        if isinstance(m, (int, np.integer)) and not isinstance(m, bool):
            i = int(m)
            if not 0 <= i < n_all:
                what = f" (0..{n_objects - 1} meshes, {n_objects}..{n_all - 1} volumes)" if vnames else \
                    f" (0..{n_objects - 1})"
                raise ValueError(f"moving object index {i} is out of range{what}")
        elif isinstance(m, str):
            if names is None and not vnames:
                raise ValueError(f"moving object {m!r} given by name, but the objects have no names "
                                 "(pass names= or indices)")
            known = (list(names) if names is not None else [f"object {p}" for p in range(n_objects)]) + vnames
            if m not in known:
                import difflib

                close = difflib.get_close_matches(m, known, n=3)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                vol = f"; volumes: {', '.join(vnames)}" if vnames else ""
                raise ValueError(f"no object named {m!r}{hint} (objects: {', '.join(known[:n_objects]) or 'none'}{vol})")
            i = known.index(m)
        else:
            raise TypeError(f"moving objects must be indices or names, got {type(m).__name__}")
        out.append(i)
    return sorted(set(out))


def volume_pose(rotvec, translation, centre, volume_centre) -> torch.Tensor:
    """The pose (6,) of a volume (rotation vector rad, translation mm, about its own centre
    ``volume_centre``, the renderer's convention) equivalent to ``x' = R (x - centre) + centre + t``:
    ``R (x - c) + c + t = R (x - c_v) + c_v + t_v`` with ``t_v = t + (R - I)(c_v - c)``.

    rotvec (3,) rad, translation (3,) mm, centre (3,) mm, volume_centre (3,) mm: tensors or arrays.
    Returns a float64 tensor (6,), differentiable in tensor inputs."""
    f = lambda x: x.to(torch.float64) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, np.float64))
    rv, t, c, cv = f(rotvec), f(translation), f(centre), f(volume_centre)
    for name, x in (("rotvec", rv), ("translation", t), ("centre", c), ("volume_centre", cv)):
        if tuple(x.shape) != (3,):
            raise ValueError(f"{name} must have shape (3,), got {tuple(x.shape)}")
    R = axis_angle_to_matrix(rv)
    d = cv - c
    return torch.cat([rv, t + R @ d - d])


def _volume_of(v):
    """The Volume of a VolumeObject or a Volume."""
    return getattr(v, "volume", v)


def volume_centroid(volume, air_hu: float = AIR_HU) -> np.ndarray:
    """Body centroid (3,) float64, world mm, of a volume (a ``Volume`` or ``VolumeObject``): the mean
    position of its voxels above ``air_hu`` (default -500 HU), each voxel counted once; the box
    centre (``Volume.centre``) when no voxel is above it. Computed from per-axis counts (no list
    of voxel indices), so a 512 x 512 x 400 CT needs one boolean array."""
    vol = _volume_of(volume)
    body = np.asarray(vol.values) > air_hu
    n = int(body.sum())
    if n == 0:
        return np.asarray(vol.centre, np.float64)
    ijk = np.array([float((np.arange(body.shape[a]) * body.sum(axis=tuple(b for b in range(3) if b != a))).sum()) / n
                    for a in range(3)])
    return np.asarray(vol.index_to_world(ijk), np.float64)


def default_centre(vertices, volumes, moving_idx) -> np.ndarray:
    """The default rotation centre (3,) mm of the moving set (module docs): the mean of the moving
    volumes' :func:`volume_centroid` when a volume moves, else the vertex centroid of the moving
    meshes. vertices: P (N_p, 3) arrays; volumes: the volumes; moving_idx: indices (``P + k`` = volume k)."""
    P = len(vertices)
    vk = [i - P for i in moving_idx if i >= P]
    if vk:
        return np.mean([volume_centroid(volumes[k]) for k in vk], axis=0)
    return np.concatenate([np.asarray(vertices[i], np.float64) for i in moving_idx]).mean(0)


def _posed_parts(base, mesh_idx, fixed, sizes, rotvec_deg, translation, c, dtype, vol_centres=None):
    """All P vertex tensors: the moving meshes ``mesh_idx`` posed (from ``base``, their
    concatenation), the others from ``fixed`` (dict index -> tensor); and the moving volumes'
    poses ``{k: (6,) tensor}`` (``vol_centres``: {k: the volume's own centre (3,) tensor})."""
    R = axis_angle_to_matrix(rotvec_deg * _DEG)
    posed = (base - c) @ R.T + c + translation
    moved = dict(zip(mesh_idx, torch.split(posed, sizes))) if mesh_idx else {}
    P = len(mesh_idx) + len(fixed)
    parts = [moved[i].to(dtype).contiguous() if i in moved else fixed[i] for i in range(P)]
    vposes = {}
    for k, cv in (vol_centres or {}).items():
        d = cv - c
        vposes[k] = torch.cat([rotvec_deg * _DEG, translation + R @ d - d])
    return parts, vposes


def _call(rend, parts, vposes):
    return rend(parts, volume_poses=vposes) if vposes else rend(parts)


def _moving_sets(verts, moving, names, volumes, dtype):
    """-> (moving_idx, mesh_idx, sizes, fixed {i: tensor}, vol_centres {k: (3,) float64 tensor})."""
    vols = list(volumes or [])
    P = len(verts)
    idx = resolve_moving(moving, P, names, [getattr(v, "name", None) or _volume_of(v).name for v in vols])
    mesh_idx = [i for i in idx if i < P]
    sizes = [len(verts[i]) for i in mesh_idx]
    fixed = {i: torch.as_tensor(np.array(v)).to(dtype).contiguous() for i, v in enumerate(verts) if i not in mesh_idx}
    vc = {i - P: torch.as_tensor(np.asarray(_volume_of(vols[i - P]).centre, np.float64)) for i in idx if i >= P}
    return idx, mesh_idx, sizes, fixed, vc


def render_posed(renderer, vertices, rotvec_deg, translation, centre, shape_model=None, beta=None,
                 dtype=torch.float32, moving=None, names=None, volumes=None) -> torch.Tensor:
    """Render the template (or shape-model instance) at a pose, without gradients.

    vertices: sequence of P (N_p, 3) templates (mm; empty with volumes only).  rotvec_deg (3,),
    translation (3,) mm, centre (3,) mm.  moving: the posed objects (indices or names, volumes
    included, see :func:`register`; default all); the shape model covers the moving meshes'
    concatenated vertices. volumes: as for :func:`register` (default the XRayRenderer's).
    Returns the renderer's output, e.g. (V, H, W)."""
    if volumes is None:
        volumes = _renderer_volumes(renderer)
    verts = _as_list_of_arrays(vertices, allow_empty=bool(volumes))
    idx, mesh_idx, sizes, fixed, vc = _moving_sets(verts, moving, names if names is not None else
                                                   _renderer_names(renderer), volumes, dtype)
    with torch.no_grad():
        if shape_model is not None:
            b = torch.zeros(shape_model.n_components, dtype=torch.float64) if beta is None else \
                torch.as_tensor(np.asarray(beta, np.float64))
            base = shape_model.vertices(b)
        else:
            base = torch.as_tensor(np.concatenate([verts[i] for i in mesh_idx]) if mesh_idx else np.zeros((0, 3)))
        parts, vposes = _posed_parts(base, mesh_idx, fixed, sizes, torch.as_tensor(np.asarray(rotvec_deg, np.float64)),
                                     torch.as_tensor(np.asarray(translation, np.float64)),
                                     torch.as_tensor(np.asarray(centre, np.float64)), dtype, vc)
        return _call(renderer, parts, vposes)


def _renderer_names(renderer):
    if _is_xray_renderer(renderer):
        return list(renderer.pipeline.names)
    return None


def _renderer_volumes(renderer):
    if _is_xray_renderer(renderer):
        return list(renderer.pipeline.volumes)
    return []


def register(
    renderer,
    target_images,
    init_pose=None,
    *,
    vertices=None,
    shape_model=None,
    mode: str = "pose",
    init_beta=None,
    loss: Union[str, Callable] = "ngc",
    optimizer: str = "adam",
    schedule: Optional[Sequence] = None,
    n_starts: int = 1,
    start_rot_deg: float = 5.0,
    start_trans_mm: float = 10.0,
    select_after: Optional[int] = None,
    seed: int = 0,
    patience: Optional[int] = 10,
    min_delta: float = 1e-4,
    mask=None,
    moving=None,
    names=None,
    volumes=None,
    prior_weight: float = 0.01,
    centre=None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    callback: Optional[Callable] = None,
) -> RegistrationResult:
    """Register meshes and CT volumes to X-ray images by gradient descent.

    Parameters
    ----------
    renderer : an :class:`~taichi_xray.torch.XRayRenderer` holding the V cameras (and any
        volumes), or any callable ``images = renderer(list of P vertex tensors (N_p, 3))``
        returning (V, H, W) (then multi-resolution pools the rendered image); with moving
        volumes a callable is called as ``renderer(parts, volume_poses={k: (6,) tensor})``.
    target_images : (V, H, W) or (H, W) array/tensor, one image per view.
    init_pose : :class:`RigidPose` (its centre is used unless ``centre`` is given),
        a previous :class:`RegistrationResult`, a pair ``(rotvec_rad (3,), translation_mm (3,))``,
        or None (identity).
    vertices : P template vertex arrays (N_p, 3) mm (or Mesh objects), one per mesh the
        renderer draws (an empty list for a renderer of volumes only). Needed for ``mode="pose"``; with a shape model only the split sizes
        of the moving objects are used and may be omitted for a single mesh (the model's
        vertices are the template).
    shape_model : :class:`~taichi_xray.fit.ssm.ShapeModel` over the concatenated vertices of
        the moving objects.
    mode : ``"pose"``, ``"shape"`` (pose fixed at ``init_pose``) or ``"pose+shape"``.
    init_beta : (K,) initial shape coefficients (default 0 = mean shape).
    loss : ``"ngc"``, ``"multiscale_ngc"``, ``"patch_ngc"``, ``"robust_ngc"``, ``"ncc"``, ``"mse"``, or a
        callable ``loss(rendered (V,h,w), target (V,h,w), mask or None) -> scalar tensor``.
    optimizer : ``"adam"`` or ``"lbfgs"``.
    schedule : list of ``(factor, iterations, lr)`` levels, coarse to fine
        (default ``[(1, 100, 1.0)]``).
    n_starts, start_rot_deg, start_trans_mm, select_after, seed : multi-start (module docs).
    patience, min_delta : early stopping per level (``patience=None`` disables it).
    mask : (H, W) or (V, H, W) weights in [0, 1] of the target pixels (1 = usable; a bool
        mask works). Min-pooled and eroded per level (module docs, "Masks").
    moving : the objects to pose as one rigid body: indices or names (None: all), volumes
        included (by name, or index ``P + k`` for volume k); the others stay where ``vertices``
        (and the renderer's volumes' affines) put them. See the module docs, "Moving objects".
    names : P object names for ``moving`` by name (default: the XRayRenderer's names).
    volumes : the renderer's volumes (``VolumeObject`` or ``Volume`` items, in its order), for
        their names and centres (default: the XRayRenderer's; none for other callables).
    prior_weight : weight of the shape prior ``0.5 |beta|^2``.
    centre : (3,) rotation centre, mm (default: RigidPose's centre, else :func:`default_centre`:
        the mean body centroid of the moving volumes, or without one the vertex centroid of the
        moving meshes).
    dtype : vertex dtype for rendering (float32 default, float64 for accuracy checks).
    progress : show a tqdm progress bar.
    callback : called as ``callback(start, level, iteration, loss, params (6[+K],))``.

    Returns
    -------
    :class:`RegistrationResult`
    """
    t_start = time.perf_counter()
    if mode not in ("pose", "shape", "pose+shape"):
        raise ValueError(f"mode must be 'pose', 'shape' or 'pose+shape', got {mode!r}")
    use_shape = mode in ("shape", "pose+shape")
    use_pose = mode in ("pose", "pose+shape")
    if use_shape and shape_model is None:
        raise ValueError(f"mode={mode!r} needs a shape_model")
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; use one of {sorted(LOSSES)} or a callable")
        loss_fn = LOSSES[loss]
    elif callable(loss):
        loss_fn = loss
    else:
        raise TypeError(f"loss must be a name or a callable, got {type(loss).__name__}")
    if not callable(renderer):
        raise TypeError(f"renderer must be callable (an XRayRenderer or a function), got {type(renderer).__name__}")
    if int(n_starts) != n_starts or n_starts < 1:
        raise ValueError(f"n_starts must be a positive integer, got {n_starts!r}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")

    # ---- targets
    tgt = torch.as_tensor(np.asarray(target_images.detach().cpu() if isinstance(target_images, torch.Tensor)
                                     else target_images), dtype=torch.float64)
    if tgt.ndim == 2:
        tgt = tgt[None]
    if tgt.ndim != 3:
        raise ValueError(f"target_images must have shape (V, H, W) or (H, W), got {tuple(tgt.shape)}")
    if not torch.isfinite(tgt).all():
        raise ValueError("target_images contain NaN or inf")
    V, H, W = tgt.shape
    if _is_xray_renderer(renderer):
        if len(renderer.cameras) != V:
            raise ValueError(f"renderer has {len(renderer.cameras)} cameras but {V} target images were given")
        if renderer.image_shape != (H, W):
            raise ValueError(f"renderer images are {renderer.image_shape}, targets are {(H, W)}")
    m_full = None
    if mask is not None:
        m_full = torch.as_tensor(np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask),
                                 dtype=torch.float64)
        if m_full.ndim == 2 and tuple(m_full.shape) == (H, W):
            m_full = m_full[None].expand(V, H, W)
        if tuple(m_full.shape) != (V, H, W):
            raise ValueError(f"mask must have shape (H, W) or (V, H, W) = {(V, H, W)}, got {tuple(m_full.shape)}")
        if not torch.isfinite(m_full).all():
            raise ValueError("mask contains NaN or inf")
        if bool((m_full < 0).any()) or bool((m_full > 1).any()):
            raise ValueError("mask weights must lie in [0, 1]")
    levels = _check_schedule(schedule, H, W)

    # ---- template / shape model
    vols = _renderer_volumes(renderer) if volumes is None else list(volumes)
    if vertices is None:
        if shape_model is None:
            raise ValueError("give the template vertices (vertices=...) or a shape_model")
        verts = [shape_model.mean]
    else:
        verts = _as_list_of_arrays(vertices, allow_empty=bool(vols))
    if names is None:
        names = _renderer_names(renderer)
    elif len(list(names)) != len(verts):
        raise ValueError(f"{len(list(names))} names for {len(verts)} objects")
    if _is_xray_renderer(renderer) and len(verts) != renderer.pipeline.n_objects:
        raise ValueError(f"{len(verts)} vertex arrays for the renderer's {renderer.pipeline.n_objects} meshes")
    moving_idx, mesh_idx, sizes, fixed, vol_c = _moving_sets(verts, moving, names, vols, dtype)
    K = 0
    if shape_model is not None and use_shape:
        if shape_model.n_vertices != sum(sizes):
            raise ValueError(f"shape model has {shape_model.n_vertices} vertices, the moving meshes have {sum(sizes)}")
        K = shape_model.n_components
        base_np = shape_model.mean
    else:
        base_np = np.concatenate([verts[i] for i in mesh_idx]) if mesh_idx else np.zeros((0, 3))
    rv0, t0, c = _init_pose(init_pose, None if centre is None else np.asarray(centre, np.float64))
    if c is None:
        c = default_centre(verts, vols, moving_idx) if vol_c else base_np.mean(0)
    c = np.asarray(c, dtype=np.float64)
    if c.shape != (3,):
        raise ValueError(f"centre must have shape (3,), got {c.shape}")
    b0 = np.zeros(K)
    if K and init_beta is not None:
        b0[: len(np.ravel(init_beta))] = np.ravel(init_beta)
    base = torch.as_tensor(base_np)
    c_t = torch.as_tensor(c)

    def images_at(params: torch.Tensor, rend, pool: int):
        shp = shape_model.vertices(params[6:6 + K]) if K else base
        parts, vposes = _posed_parts(shp, mesh_idx, fixed, sizes, params[0:3], params[3:6], c_t, dtype, vol_c)
        img = _call(rend, parts, vposes)
        if img.ndim == 2:
            img = img[None]
        return _pool(img.to(torch.float64), pool)

    # precompute per-level targets / renderers
    lev_data = []
    for s, n, lr in levels:
        rend, needs_pool = _renderer_at(renderer, s)
        t_s = _pool(tgt, s)
        m_s = None if m_full is None else _losses.pool_mask(m_full, s)
        if m_s is not None and bool((m_s.flatten(1).sum(1) <= 0).any()):
            raise ValueError(f"the mask leaves no usable pixel at schedule factor {s} in at least one view "
                             "(min-pooled and eroded by one pixel for the Sobel stencil); use a larger mask "
                             "or a smaller factor")
        lev_data.append((rend, s if needs_pool else 1, t_s, m_s))

    # starts
    rng = np.random.default_rng(seed)
    starts = [np.concatenate([rv0, t0, b0])]
    for _ in range(1, n_starts):
        p = starts[0].copy()
        if use_pose:
            p[0:3] += rng.uniform(-start_rot_deg, start_rot_deg, 3)
            p[3:6] += rng.uniform(-start_trans_mm, start_trans_mm, 3)
        starts.append(p)
    grad_mask = torch.zeros(6 + K, dtype=torch.float64)
    if use_pose:
        grad_mask[:6] = 1
    if K:
        grad_mask[6:] = 1

    total_iters = sum(n for _, n, _ in levels) * n_starts
    try:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_iters, disable=not progress, desc="register", leave=False)
    except ImportError:  # pragma: no cover
        bar = None
    n_eval = [0]

    def run_levels(state, level_ids, k):
        """state: dict(params np, hist lists). Runs the given levels in place."""
        for li in level_ids:
            s, n_it, lr = levels[li]
            rend, pool, t_s, m_s = lev_data[li]
            x = torch.tensor(state["params"], dtype=torch.float64, requires_grad=True)

            def closure():
                if opt is not None:
                    opt.zero_grad()
                img = images_at(x, rend, pool)
                L = loss_fn(img, t_s.to(img.dtype), m_s)
                if K:
                    L = L + prior_weight * shape_model.mahalanobis_prior(x[6:6 + K])
                L.backward()
                x.grad.mul_(grad_mask)
                n_eval[0] += 1
                return L

            if optimizer == "adam":
                opt = torch.optim.Adam([x], lr=lr)
            else:
                opt = torch.optim.LBFGS([x], lr=lr, max_iter=1, history_size=10, line_search_fn="strong_wolfe")
            best_L, best_p, since = math.inf, x.detach().clone().numpy(), 0
            for it in range(n_it):
                p_before = x.detach().clone().numpy()
                L = opt.step(closure)  # both return the loss at p_before
                Lv = float(L.detach())
                state["loss"].append(Lv)
                state["params_hist"].append(p_before)
                state["level"].append(li)
                if callback is not None:
                    callback(k, li, it, Lv, p_before)
                if bar is not None:
                    bar.update(1)
                if Lv < best_L - min_delta:
                    best_L, best_p, since = Lv, p_before, 0
                else:
                    if Lv < best_L:
                        best_L, best_p = Lv, p_before
                    since += 1
                if not np.isfinite(x.detach().numpy()).all():
                    raise FloatingPointError("registration diverged (non-finite parameters); lower the lr")
                if patience is not None and since >= patience:
                    state["early"] = True
                    if bar is not None:
                        bar.update(n_it - it - 1)
                    break
            if n_it > 0:
                # evaluate the final parameters too (the last step's result is not yet scored)
                with torch.no_grad():
                    x_end = x.detach().clone()
                    img = images_at(x_end, rend, pool)
                    Le = loss_fn(img, t_s.to(img.dtype), m_s)
                    if K:
                        Le = Le + prior_weight * shape_model.mahalanobis_prior(x_end[6:6 + K])
                    n_eval[0] += 1
                    Le = float(Le)
                if Le < best_L:
                    best_L, best_p = Le, x_end.numpy()
                state["params"] = best_p
                state["final_loss"] = best_L
                state["level_loss"][li] = best_L
        return state

    states = []
    nl = len(levels)
    first = list(range(nl if select_after is None else min(int(select_after), nl)))
    for k, p0 in enumerate(starts):
        st = dict(params=p0.copy(), loss=[], params_hist=[], level=[], early=False, final_loss=math.nan,
                  level_loss=np.full(nl, np.nan))
        states.append(run_levels(st, first, k))
    finals = np.array([s["final_loss"] for s in states], dtype=np.float64)
    k_best = int(np.nanargmin(finals)) if np.isfinite(finals).any() else 0
    if len(first) < nl:
        if bar is not None:
            bar.total = sum(n for _, n, _ in levels[: len(first)]) * n_starts + sum(n for _, n, _ in levels[len(first):])
        run_levels(states[k_best], list(range(len(first), nl)), k_best)
        finals = np.full(n_starts, np.nan)
        finals[k_best] = states[k_best]["final_loss"]
    if bar is not None:
        bar.close()
    best = states[k_best]
    p = np.asarray(best["params"], dtype=np.float64)
    hist = np.array(best["params_hist"], dtype=np.float64).reshape(-1, 6 + K)
    return RegistrationResult(
        rotvec=p[0:3] * _DEG,
        translation=p[3:6].copy(),
        centre=c.copy(),
        beta=p[6:6 + K].copy() if K else None,
        loss=float(best["final_loss"]),
        loss_history=np.array(best["loss"], dtype=np.float64),
        param_history=hist,
        level_history=np.array(best["level"], dtype=np.int64),
        time_s=time.perf_counter() - t_start,
        n_iterations=len(best["loss"]),
        n_evaluations=n_eval[0],
        start=k_best,
        start_losses=finals,
        start_poses=np.array([s[:6] for s in starts]),
        stopped_early=bool(best["early"]),
        level_losses=best["level_loss"].copy(),
        moving=tuple(moving_idx),
    )
