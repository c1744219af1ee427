"""Fit a shape-and-density model of a tetrahedral mesh (pose + coefficients) to X-ray images.

:func:`register_tet_model` fits the rigid pose and the coefficients β of a
:class:`~taichi_xray.objects.tetssm.TetShapeDensityModel` (PCA over vertices *and* densities,
``z(β) = mean + Σ β_i std_i PC_i``) to V target images, rendering through the one pipeline
(:meth:`~taichi_xray.pipeline.Pipeline.render_torch` with ``vertices=`` the posed model
vertices and ``densities=`` the model densities), so both the shape and the density inside
the mesh move the image and receive gradients.

Objective (minimised by Adam, coarse to fine)::

    E(θ, t, β) = mean_views loss(render(R(θ) (v(β) - c) + c + t, ρ(β)), target)
                 + prior_weight · ½ |β|²

* ``v(β)`` (N, 3) mm and ``ρ(β)`` (R, B) relative densities from the model; ``θ`` a rotation
  vector (parameterised in degrees for the optimiser), ``t`` a translation (mm), ``c`` the
  rotation centre (default the model's reference point, the volume-weighted centroid of the
  mean shape).
* ``½ |β|²`` is half the squared Mahalanobis distance of ``z(β)`` from the mean under the
  model's Gaussian (β is in units of standard deviations): the shape-and-density prior.
* ``loss``: ``"ngc"`` (normalised gradient correlation, Penney et al. 1998, IEEE TMI 17:586;
  invariant to the image's scale and offset, so a density mode that only scales the
  attenuation uniformly is not observable with it), ``"ncc"``, ``"mse"`` (the line integrals
  themselves: every mode observable), or a callable ``loss(rendered (V, h, w), target (V, h,
  w)) -> scalar``.
* Coarse to fine: each ``schedule`` level ``(factor, iterations, lr_pose, lr_beta)`` renders on
  cameras with ``factor × factor`` binned pixels (:func:`taichi_xray.fit.register.downsample_camera`)
  against the target average-pooled by ``factor``; one Adam per level, learning rates in
  degrees / mm per step (pose) and standard deviations per step (β), decaying exponentially to
  ``decay`` times their value over the level.

The pipeline holds the model's template mesh with *every* triangle of the tetrahedralisation
(interior faces whose density jump is zero at the mean would otherwise be skipped and could
not take the jumps other β give them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .losses import mse, ncc_loss, ngc_loss
from .register import downsample_camera

__all__ = ["TetRegistrationResult", "register_tet_model", "tet_model_pipeline", "DEFAULT_TET_SCHEDULE"]

#: (binning factor, iterations, lr pose (deg | mm per step), lr β (std per step)), coarse to fine
DEFAULT_TET_SCHEDULE = ((2, 60, 1.0, 0.1), (1, 60, 0.3, 0.03))

_LOSSES = {"ngc": ngc_loss, "ncc": ncc_loss, "mse": mse}


@dataclass
class TetRegistrationResult:
    """rotvec (3,) rad, translation (3,) mm, beta (K,), centre (3,) mm: the pose maps the model's
    vertices ``v -> R (v - centre) + centre + translation``. ``loss`` the final data term,
    ``history`` the objective per iteration, ``n_iterations``, ``seconds``."""

    rotvec: np.ndarray
    translation: np.ndarray
    beta: np.ndarray
    centre: np.ndarray
    loss: float
    n_iterations: int
    seconds: float
    history: list = field(default_factory=list)

    @property
    def rotvec_deg(self) -> np.ndarray:
        return np.rad2deg(self.rotvec)

    def rotation_matrix(self) -> np.ndarray:
        from scipy.spatial.transform import Rotation

        return Rotation.from_rotvec(self.rotvec).as_matrix()

    def transform(self, points) -> np.ndarray:
        """Map points (..., 3) mm of the model frame by the fitted pose."""
        p = np.asarray(points, dtype=np.float64)
        return (p - self.centre) @ self.rotation_matrix().T + self.centre + self.translation

    def vertices(self, model) -> np.ndarray:
        """The fitted mesh's vertices (N, 3) mm: the model at β, posed."""
        return self.transform(model.vertices(self.beta))

    def densities(self, model) -> np.ndarray:
        """The fitted densities (R, B)."""
        return np.asarray(model.densities(self.beta))


def tet_model_pipeline(model, cameras, *, name: str = "tet", seed: int = 0, **pipeline_kwargs):
    """A :class:`~taichi_xray.pipeline.Pipeline` rendering ``model`` (one tetrahedral object named
    ``name``, every triangle kept) for ``cameras``; ``pipeline_kwargs`` go to the Pipeline
    (spectrum, detector, output, dtype, ...). Render it with ``render_torch([vertices],
    densities={name: densities})``."""
    from ..objects.tetmesh import TetMesh
    from ..pipeline import Pipeline

    rng = np.random.default_rng(seed)
    # generic positive densities: every interior face carries a non-zero jump, so none is skipped
    probe = rng.uniform(0.5, 1.5, (model.n_rows, len(model.basis)))
    tm = TetMesh(model.vertices(), model.tets, probe, model.basis, name, kind=model.kind, repair=False)
    pipe = Pipeline([tm], cameras, materials=[None], names=[name], **pipeline_kwargs)
    kept = len(pipe.tets[0][1])
    if kept != tm.n_faces:  # pragma: no cover - a random jump of exactly zero
        raise RuntimeError(f"the pipeline kept {kept} of the model's {tm.n_faces} faces")
    return pipe


def _pool(x: torch.Tensor, s: int) -> torch.Tensor:
    return x if s == 1 else F.avg_pool2d(x[:, None], s)[:, 0]


def register_tet_model(model, cameras, targets, *, init_pose=None, init_beta=None, centre=None,
                       loss: Union[str, Callable] = "ngc", schedule: Optional[Sequence] = None,
                       prior_weight: float = 1e-3, fit_pose: bool = True, fit_beta: bool = True,
                       n_beta: Optional[int] = None, decay: float = 0.1, dtype=torch.float32,
                       callback: Optional[Callable] = None, **pipeline_kwargs) -> TetRegistrationResult:
    """Fit pose and shape-and-density coefficients of ``model`` to ``targets``.

    Parameters
    ----------
    model : :class:`~taichi_xray.objects.tetssm.TetShapeDensityModel`.
    cameras : a Camera or V cameras of one detector size (H, W) (each level's size must divide
        by its factor).
    targets : (V, H, W) or (H, W) images of the pipeline's ``output`` kind (default line integral).
    init_pose : None (identity) or ``(rotvec rad (3,), translation mm (3,))``.
    init_beta : (K',) starting coefficients (default 0, the mean). n_beta : fit only the first
        n_beta coefficients (default all K).
    centre : (3,) rotation centre, mm (default ``model.reference_point``).
    loss : "ngc", "ncc", "mse" or a callable (see the module docstring).
    schedule : levels ``(factor, iterations, lr_pose, lr_beta)``, default :data:`DEFAULT_TET_SCHEDULE`.
    prior_weight : weight of ``½ |β|²`` (the Mahalanobis prior).
    fit_pose, fit_beta : which parameters move.
    decay : each level's learning rates fall exponentially to ``decay`` × their start.
    dtype : the pipeline's precision (torch.float32 or torch.float64).
    callback : ``callback(level, iteration, objective, params (6 + K',))`` per iteration.
    pipeline_kwargs : spectrum, detector, output, air, ... for the pipelines.

    Returns a :class:`TetRegistrationResult`.
    """
    import time

    from ..camera import Camera
    from ..pose import rigid_transform
    from ..objects.tetssm import TetShapeDensityModel

    if not isinstance(model, TetShapeDensityModel):
        raise TypeError(f"model must be a TetShapeDensityModel, got {type(model).__name__}")
    cams = [cameras] if isinstance(cameras, Camera) else list(cameras)
    if not cams or not all(isinstance(c, Camera) for c in cams):
        raise TypeError("cameras must be a Camera or a non-empty sequence of Camera objects")
    tgt = torch.as_tensor(np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets,
                                     dtype=np.float64))
    if tgt.ndim == 2:
        tgt = tgt[None]
    H, W = cams[0].height, cams[0].width
    if tgt.shape != (len(cams), H, W):
        raise ValueError(f"targets must have shape ({len(cams)}, {H}, {W}) (one image per camera), got "
                         f"{tuple(tgt.shape)}")
    if not bool(torch.isfinite(tgt).all()):
        raise ValueError("targets contain NaN or inf")
    if isinstance(loss, str):
        if loss not in _LOSSES:
            raise ValueError(f"loss must be one of {sorted(_LOSSES)} or a callable, got {loss!r}")
        loss_fn = _LOSSES[loss]
    elif callable(loss):
        loss_fn = loss
    else:
        raise TypeError("loss must be a name or a callable")
    sched = [tuple(s) for s in (DEFAULT_TET_SCHEDULE if schedule is None else schedule)]
    for s in sched:
        if len(s) != 4:
            raise ValueError(f"schedule levels are (factor, iterations, lr_pose, lr_beta), got {s!r}")
        f = int(s[0])
        if f != s[0] or f < 1 or H % f or W % f:
            raise ValueError(f"binning factor {s[0]!r} must be a positive integer dividing the detector ({H}x{W})")
        if int(s[1]) < 0 or not (s[2] >= 0 and s[3] >= 0):
            raise ValueError(f"iterations and learning rates must be >= 0, got {s!r}")
    if not (prior_weight >= 0 and np.isfinite(prior_weight)):
        raise ValueError(f"prior_weight must be a finite number >= 0, got {prior_weight!r}")
    if not (0 < decay <= 1):
        raise ValueError(f"decay must lie in (0, 1], got {decay!r}")
    K = model.n_components if n_beta is None else int(n_beta)
    if not 0 <= K <= model.n_components:
        raise ValueError(f"n_beta must lie in [0, {model.n_components}], got {n_beta!r}")
    f64 = dict(dtype=torch.float64)
    if init_pose is None:
        rv0, t0 = np.zeros(3), np.zeros(3)
    else:
        rv0, t0 = (np.asarray(x, dtype=np.float64).reshape(-1) for x in init_pose)
        if rv0.shape != (3,) or t0.shape != (3,) or not (np.isfinite(rv0).all() and np.isfinite(t0).all()):
            raise ValueError("init_pose must be (rotation vector rad (3,), translation mm (3,)), finite")
    b0 = np.zeros(K)
    if init_beta is not None:
        ib = np.asarray(init_beta, dtype=np.float64).reshape(-1)
        if ib.size > model.n_components or not np.isfinite(ib).all():
            raise ValueError(f"init_beta must hold at most {model.n_components} finite values, got {ib.size}")
        b0[:min(K, ib.size)] = ib[:K]
    c = np.asarray(model.reference_point if centre is None else centre, dtype=np.float64).reshape(-1)
    if c.shape != (3,):
        raise ValueError(f"centre must be a 3-vector (mm), got shape {c.shape}")
    rot_deg = torch.tensor(np.rad2deg(rv0), requires_grad=fit_pose, **f64)
    trans = torch.tensor(t0, requires_grad=fit_pose, **f64)
    beta = torch.tensor(b0, requires_grad=fit_beta and K > 0, **f64)
    centre_t = torch.tensor(c, **f64)
    name = "tet"
    pipes = {f: tet_model_pipeline(model, [downsample_camera(cm, f) for cm in cams], name=name, dtype=dtype,
                                   **pipeline_kwargs) for f in sorted({int(s[0]) for s in sched})}
    from ..runtime import torch_device

    pooled = {f: _pool(tgt, f).to(torch_device()) for f in pipes}

    def objective(f):
        v = rigid_transform(model.vertices(beta), torch.deg2rad(rot_deg), trans, centre_t)
        d = model.densities(beta)
        img = pipes[f].render_torch([v.to(dtype)], densities={name: d.to(dtype)}).to(torch.float64)
        data = loss_fn(img, pooled[f]).cpu()
        return data, data + prior_weight * 0.5 * (beta * beta).sum()

    history, n_it, data = [], 0, torch.tensor(float("nan"))
    t_start = time.perf_counter()
    for li, (f, iters, lr_p, lr_b) in enumerate(sched):
        groups = []
        if fit_pose and lr_p > 0:
            groups.append({"params": [rot_deg, trans], "lr": float(lr_p)})
        if fit_beta and K > 0 and lr_b > 0:
            groups.append({"params": [beta], "lr": float(lr_b)})
        if not groups or int(iters) == 0:
            continue
        opt = torch.optim.Adam(groups)
        sch = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=decay ** (1.0 / int(iters)))
        for it in range(int(iters)):
            opt.zero_grad()
            data, total = objective(int(f))
            total.backward()
            opt.step()
            sch.step()
            n_it += 1
            history.append(float(total.detach()))
            if callback is not None:
                callback(li, it, float(total.detach()), torch.cat([rot_deg, trans, beta]).detach().numpy())
    with torch.no_grad():
        data, _ = objective(int(sched[-1][0]))
    return TetRegistrationResult(rotvec=np.deg2rad(rot_deg.detach().numpy()), translation=trans.detach().numpy(),
                                 beta=beta.detach().numpy(), centre=c, loss=float(data), n_iterations=n_it,
                                 seconds=time.perf_counter() - t_start, history=history)
