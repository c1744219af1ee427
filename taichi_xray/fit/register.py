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
s > 1 the target (and mask) are **average-pooled** by s x s, and when the
renderer is an :class:`~taichi_xray.torch.XRayRenderer` the model image is
**rendered on a downsampled detector** (:func:`downsample_camera`: the same
geometry with s x s larger pixels whose centres coincide with the pooled
pixels' centres), which makes coarse levels about s^2 times cheaper. For any
other callable the model image is rendered at full size and average-pooled.
(The downsampled rendering point-samples one ray per coarse pixel where the
pooled target averages s^2 rays; NGC's Sobel gradients are insensitive to that
slight difference in blur.)

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

__all__ = ["register", "RegistrationResult", "downsample_camera", "render_posed", "LOSSES"]

_DEG = math.pi / 180.0

LOSSES: dict[str, Callable] = {
    "ngc": lambda a, b, m: _losses.ngc_loss(a, b, mask=m),
    "multiscale_ngc": lambda a, b, m: _losses.multiscale_ngc_loss(a, b, levels=min(3, _max_levels(a)), mask=m),
    "patch_ngc": lambda a, b, m: _losses.patch_ngc_loss(a, b, patch_size=max(3, min(a.shape[-2:]) // 4 - 2), mask=m),
    "ncc": lambda a, b, m: _losses.ncc_loss(a, b, mask=m),
    "mse": lambda a, b, m: _losses.mse(a, b, mask=m),
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


def _as_list_of_arrays(vertices) -> list[np.ndarray]:
    if isinstance(vertices, (np.ndarray, torch.Tensor)) and np.ndim(vertices) == 2:
        vertices = [vertices]
    out = []
    for i, v in enumerate(vertices):
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(getattr(v, "vertices", v))
        a = np.asarray(a, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != 3:
            raise ValueError(f"vertices[{i}] must have shape (N, 3), got {a.shape}")
        out.append(a)
    if not out:
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


def render_posed(renderer, vertices, rotvec_deg, translation, centre, shape_model=None, beta=None,
                 dtype=torch.float32) -> torch.Tensor:
    """Render the template (or shape-model instance) at a pose, without gradients.

    vertices: sequence of P (N_p, 3) templates (mm).  rotvec_deg (3,), translation (3,) mm,
    centre (3,) mm.  Returns the renderer's output, e.g. (V, H, W)."""
    verts = _as_list_of_arrays(vertices)
    sizes = [len(v) for v in verts]
    with torch.no_grad():
        if shape_model is not None:
            b = torch.zeros(shape_model.n_components, dtype=torch.float64) if beta is None else \
                torch.as_tensor(np.asarray(beta, np.float64))
            base = shape_model.vertices(b)
        else:
            base = torch.as_tensor(np.concatenate(verts))
        rv = torch.as_tensor(np.asarray(rotvec_deg, np.float64) * _DEG)
        R = axis_angle_to_matrix(rv)
        c = torch.as_tensor(np.asarray(centre, np.float64))
        posed = (base - c) @ R.T + c + torch.as_tensor(np.asarray(translation, np.float64))
        parts = [p.to(dtype).contiguous() for p in torch.split(posed, sizes)]
        return renderer(parts)


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
    prior_weight: float = 0.01,
    centre=None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    callback: Optional[Callable] = None,
) -> RegistrationResult:
    """Register meshes to X-ray images by gradient descent.

    Parameters
    ----------
    renderer : an :class:`~taichi_xray.torch.XRayRenderer` holding the V cameras,
        or any callable ``images = renderer(list of P vertex tensors (N_p, 3))``
        returning (V, H, W) (then multi-resolution pools the rendered image).
    target_images : (V, H, W) or (H, W) array/tensor, one image per view.
    init_pose : :class:`RigidPose` (its centre is used unless ``centre`` is given),
        a previous :class:`RegistrationResult`, a pair ``(rotvec_rad (3,), translation_mm (3,))``,
        or None (identity).
    vertices : P template vertex arrays (N_p, 3) mm (or Mesh objects). Needed for
        ``mode="pose"``; with a shape model only the split sizes are used and may be
        omitted for a single mesh (the model's vertices are the template).
    shape_model : :class:`~taichi_xray.fit.ssm.ShapeModel` over the concatenated vertices.
    mode : ``"pose"``, ``"shape"`` (pose fixed at ``init_pose``) or ``"pose+shape"``.
    init_beta : (K,) initial shape coefficients (default 0 = mean shape).
    loss : ``"ngc"``, ``"multiscale_ngc"``, ``"patch_ngc"``, ``"ncc"``, ``"mse"``, or a
        callable ``loss(rendered (V,h,w), target (V,h,w), mask or None) -> scalar tensor``.
    optimizer : ``"adam"`` or ``"lbfgs"``.
    schedule : list of ``(factor, iterations, lr)`` levels, coarse to fine
        (default ``[(1, 100, 1.0)]``).
    n_starts, start_rot_deg, start_trans_mm, select_after, seed : multi-start (module docs).
    patience, min_delta : early stopping per level (``patience=None`` disables it).
    mask : (H, W) or (V, H, W) non-negative weights of target pixels.
    prior_weight : weight of the shape prior ``0.5 |beta|^2``.
    centre : (3,) rotation centre, mm (default: RigidPose's centre, else the template centroid).
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
        if bool((m_full < 0).any()):
            raise ValueError("mask weights must be non-negative")
    levels = _check_schedule(schedule, H, W)

    # ---- template / shape model
    if vertices is None:
        if shape_model is None:
            raise ValueError("give the template vertices (vertices=...) or a shape_model")
        verts = [shape_model.mean]
    else:
        verts = _as_list_of_arrays(vertices)
    sizes = [len(v) for v in verts]
    K = 0
    if shape_model is not None and use_shape:
        if shape_model.n_vertices != sum(sizes):
            raise ValueError(f"shape model has {shape_model.n_vertices} vertices, the meshes have {sum(sizes)}")
        K = shape_model.n_components
        base_np = shape_model.mean
    else:
        base_np = np.concatenate(verts)
    rv0, t0, c = _init_pose(init_pose, None if centre is None else np.asarray(centre, np.float64))
    if c is None:
        c = base_np.mean(0)
    c = np.asarray(c, dtype=np.float64)
    if c.shape != (3,):
        raise ValueError(f"centre must have shape (3,), got {c.shape}")
    b0 = np.zeros(K)
    if K and init_beta is not None:
        b0[: len(np.ravel(init_beta))] = np.ravel(init_beta)
    base = torch.as_tensor(base_np)
    c_t = torch.as_tensor(c)

    def images_at(params: torch.Tensor, rend, pool: int):
        rv = params[0:3] * _DEG
        tr = params[3:6]
        if K:
            shp = shape_model.vertices(params[6:6 + K])
        else:
            shp = base
        R = axis_angle_to_matrix(rv)
        posed = (shp - c_t) @ R.T + c_t + tr
        parts = [p.to(dtype).contiguous() for p in torch.split(posed, sizes)]
        img = rend(parts)
        if img.ndim == 2:
            img = img[None]
        return _pool(img.to(torch.float64), pool)

    # precompute per-level targets / renderers
    lev_data = []
    for s, n, lr in levels:
        rend, needs_pool = _renderer_at(renderer, s)
        t_s = _pool(tgt, s)
        m_s = None if m_full is None else _pool(m_full, s)
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
        return state

    states = []
    nl = len(levels)
    first = list(range(nl if select_after is None else min(int(select_after), nl)))
    for k, p0 in enumerate(starts):
        st = dict(params=p0.copy(), loss=[], params_hist=[], level=[], early=False, final_loss=math.nan)
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
    )
