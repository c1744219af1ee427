"""Shape-and-density models (PCA) of tetrahedral meshes in correspondence.

The idea of :mod:`taichi_xray.fit.ssm` (a statistical shape model of vertices) extended
to the density inside: every training member is a :class:`~taichi_xray.objects.tetmesh.TetMesh`
with the same tets (connectivity) and the same basis, and the model is a PCA of the
vector ``z = [vertices (3N, mm), s · densities (T·B or N·B)]``:

    z(β) = mean + Σ_i β_i · std_i · PC_i,

with orthonormal components ``PC_i``, standard deviations ``std_i`` (in the mixed units
of z) and coefficients β in units of standard deviations (Gaussian prior ``0.5 |β|²``).
``s`` (``density_scale``, mm per unit of relative density) weighs density variation
against shape variation; by default it gives both blocks the same total variance in the
training set, so neither dominates the components (``s = 1`` when densities do not vary).

:meth:`TetShapeDensityModel.vertices` and :meth:`~TetShapeDensityModel.densities` are
differentiable torch functions of β; :meth:`~TetShapeDensityModel.face_weights` gives the
rasterizer's per-face jumps as a differentiable function of β too. Training members must
already be in correspondence and in a common frame (no alignment is done here). Nothing
keeps densities non-negative or tets positively oriented far from the training data:
:meth:`~TetShapeDensityModel.tetmesh` checks both.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .tetmesh import DEFAULT_BASIS, TetMesh, constant_jumps, linear_jumps, tet_volumes

__all__ = ["TetShapeDensityModel"]

_FORMAT_VERSION = 1


class TetShapeDensityModel:
    """PCA model of vertices and densities of tet meshes with one connectivity.

    mean : (D,) with D = 3N + R·B (R = T for constant, N for linear densities).
    components : (K, D) orthonormal rows. std : (K,). tets : (T, 4). basis : B names.
    kind : "constant" | "linear". density_scale : s (see the module docstring).
    face_tets, faces : the template's face topology (same for every member).
    """

    def __init__(self, mean, components, std, tets, basis, kind: str, density_scale: float,
                 total_variance: float | None = None, n_training: int = 0, template_vertices=None):
        self.mean = np.asarray(mean, np.float64)
        self.components = np.asarray(components, np.float64)
        self.std = np.asarray(std, np.float64)
        self.tets = np.asarray(tets, np.int64)
        self.basis = tuple(basis)
        if kind not in ("constant", "linear"):
            raise ValueError(f"kind must be 'constant' or 'linear', got {kind!r}")
        self.kind = kind
        self.density_scale = float(density_scale)
        if not (self.density_scale > 0 and np.isfinite(self.density_scale)):
            raise ValueError(f"density_scale must be positive, got {density_scale}")
        N = int(self.tets.max()) + 1
        R = len(self.tets) if kind == "constant" else N
        D = 3 * N + R * len(self.basis)
        if self.mean.shape != (D,):
            raise ValueError(f"mean must have shape ({D},) for {N} vertices, {R} density rows and "
                             f"{len(self.basis)} basis materials, got {self.mean.shape}")
        if self.components.ndim != 2 or self.components.shape[1] != D or self.std.shape != (len(self.components),):
            raise ValueError(f"components (K, {D}) and std (K,) do not match: {self.components.shape}, "
                             f"{self.std.shape}")
        self.n_vertices, self.n_rows = N, R
        self.total_variance = float((self.std**2).sum() if total_variance is None else total_variance)
        self.n_training = int(n_training)
        tv = self.mean[:3 * N].reshape(N, 3) if template_vertices is None else np.asarray(template_vertices)
        self._template = TetMesh(tv, self.tets, None, self.basis, kind=kind, repair=False)  # checks, face topology
        self.faces, self.face_tets = self._template.faces, self._template.face_tets
        Vm = self.mean[:3 * N].reshape(N, 3)
        vol = np.abs(tet_volumes(Vm, self.tets))
        #: (3,) volume-weighted centroid of the mean shape: the default x_ref of face_weights
        self.reference_point = (Vm[self.tets].mean(1) * vol[:, None]).sum(0) / vol.sum()
        self._torch: dict = {}

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, members: Sequence[TetMesh] | None = None, *, vertices=None, densities=None, tets=None,
            basis=DEFAULT_BASIS, kind: str | None = None, n_components: int | float | None = None,
            density_scale: float | None = None) -> "TetShapeDensityModel":
        """PCA of S >= 2 training members.

        members : TetMeshes with identical ``tets``, ``basis`` and ``kind``; or the arrays
            ``vertices`` (S, N, 3) mm, ``densities`` (S, R, B) and ``tets`` (T, 4) with
            ``kind``.
        n_components : None (all with non-zero variance, at most S − 1), an int K, or a
            float in (0, 1]: the fewest components explaining that fraction of the variance.
        density_scale : s; default balances the total variances of the two blocks.
        """
        if members is not None:
            members = list(members)
            if len(members) < 2:
                raise ValueError(f"need at least 2 training members, got {len(members)}")
            m0 = members[0]
            for i, m in enumerate(members):
                if not isinstance(m, TetMesh):
                    raise TypeError(f"members[{i}] is not a TetMesh")
                if m.tets.shape != m0.tets.shape or not np.array_equal(m.tets, m0.tets):
                    raise ValueError(f"members[{i}] has other tets than members[0]: members must be in correspondence "
                                     "(same connectivity; note a repaired orientation changes the tets)")
                if m.basis != m0.basis or m.kind != m0.kind:
                    raise ValueError(f"members[{i}] has basis/kind {m.basis}/{m.kind}, members[0] {m0.basis}/{m0.kind}")
            Vs = np.stack([m.vertices for m in members])
            Ds = np.stack([m.densities for m in members])
            tets, basis, kind = m0.tets, m0.basis, m0.kind
        else:
            if vertices is None or densities is None or tets is None or kind is None:
                raise ValueError("give members, or vertices, densities, tets and kind")
            Vs = np.asarray(vertices, np.float64)
            Ds = np.asarray(densities, np.float64)
            tets = np.asarray(tets, np.int64)
        S = len(Vs)
        if S < 2:
            raise ValueError(f"need at least 2 training members, got {S}")
        if Vs.ndim != 3 or Vs.shape[2] != 3 or Ds.ndim != 3 or len(Ds) != S:
            raise ValueError(f"vertices must be (S, N, 3) and densities (S, R, B), got {Vs.shape} and {Ds.shape}")
        if not (np.isfinite(Vs).all() and np.isfinite(Ds).all()):
            raise ValueError("training members contain NaN or inf")
        Xv = Vs.reshape(S, -1)
        Xd = Ds.reshape(S, -1)
        if density_scale is None:
            vv = float(((Xv - Xv.mean(0)) ** 2).sum())
            vd = float(((Xd - Xd.mean(0)) ** 2).sum())
            density_scale = float(np.sqrt(vv / vd)) if vd > 0 and vv > 0 else 1.0
        X = np.concatenate([Xv, density_scale * Xd], axis=1)
        mean = X.mean(0)
        _, s, Vt = np.linalg.svd(X - mean, full_matrices=False)
        var = s**2 / (S - 1)
        tol = s[0] * max(X.shape) * np.finfo(np.float64).eps if len(s) else 0.0
        rank = int(min(np.sum(s > tol), S - 1))
        if rank == 0:
            raise ValueError("training members show no variation; cannot build a model")
        if n_components is None:
            K = rank
        elif isinstance(n_components, (bool, np.bool_)):
            raise TypeError("n_components must be None, an int or a float fraction")
        elif isinstance(n_components, (int, np.integer)):
            if not 1 <= n_components <= rank:
                raise ValueError(f"n_components must be in [1, {rank}] (rank of the training data), got {n_components}")
            K = int(n_components)
        elif isinstance(n_components, float) and 0.0 < n_components <= 1.0:
            K = int(min(np.searchsorted(np.cumsum(var[:rank]) / var.sum(), n_components - 1e-12) + 1, rank))
        else:
            raise ValueError(f"n_components must be None, an int or a float in (0, 1], got {n_components!r}")
        return cls(mean, Vt[:K], np.sqrt(var[:K]), tets, basis, kind, density_scale, float(var.sum()), S,
                   template_vertices=Vs[0])

    # ------------------------------------------------------------------ evaluation
    @property
    def n_components(self) -> int:
        return len(self.std)

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        return self.std**2 / (self.total_variance if self.total_variance > 0 else 1.0)

    def _z(self, beta):
        is_torch = isinstance(beta, torch.Tensor)
        if not is_torch:
            beta = np.asarray(beta, dtype=np.float64)
        if beta.ndim not in (1, 2) or beta.shape[-1] > self.n_components:
            raise ValueError(f"beta must have shape (K',) or (S, K') with K' <= {self.n_components}, "
                             f"got {tuple(beta.shape)}")
        k = beta.shape[-1]
        if is_torch:
            if not beta.is_floating_point():
                raise TypeError(f"beta must be a floating-point tensor, got {beta.dtype}")
            key = (beta.dtype, str(beta.device))
            if key not in self._torch:
                self._torch[key] = (torch.as_tensor(self.mean, dtype=beta.dtype, device=beta.device),
                                    torch.as_tensor(self.std[:, None] * self.components, dtype=beta.dtype,
                                                    device=beta.device))
            mean, basis = self._torch[key]
            return mean + beta @ basis[:k]
        return self.mean + beta @ (self.std[:k, None] * self.components[:k])

    def vertices(self, beta=None):
        """(N, 3) or (S, N, 3) mm for β (K',) / (S, K'); torch in -> torch out (differentiable)."""
        z = self.mean if beta is None else self._z(beta)
        return z[..., :3 * self.n_vertices].reshape(*z.shape[:-1], self.n_vertices, 3)

    def densities(self, beta=None):
        """(R, B) or (S, R, B) relative densities for β; torch in -> torch out (differentiable)."""
        z = self.mean if beta is None else self._z(beta)
        d = z[..., 3 * self.n_vertices:] / self.density_scale
        return d.reshape(*z.shape[:-1], self.n_rows, len(self.basis))

    def face_weights(self, beta, x_ref=None):
        """Per-face jumps for β (K',), differentiable in torch: constant kind -> (F, B);
        linear kind -> (F, B, 4) (see :meth:`TetMesh.linear_jumps`), with ``x_ref`` (3,)
        default the mean shape's reference point."""
        d = self.densities(beta)
        if self.kind == "constant":
            return constant_jumps(d, self.face_tets)
        if x_ref is None:
            x_ref = self.reference_point
        return linear_jumps(self.vertices(beta), self.tets, d, self.face_tets, x_ref)

    def tetmesh(self, beta=None, name: str | None = None) -> TetMesh:
        """A checked :class:`TetMesh` (numpy) for β (raises on inverted tets or negative densities)."""
        if isinstance(beta, torch.Tensor):
            beta = beta.detach().cpu().numpy()
        V = self.vertices(beta)
        D = self.densities(beta)
        if np.ndim(V) != 2:
            raise ValueError("tetmesh() takes one β (K',)")
        return TetMesh(V, self.tets, D, self.basis, name, kind=self.kind, repair=False)

    def project(self, vertices, densities) -> np.ndarray:
        """Least-squares β (K,) of a member (vertices (N, 3), densities (R, B)), numpy."""
        z = np.concatenate([np.asarray(vertices, np.float64).reshape(-1),
                            self.density_scale * np.asarray(densities, np.float64).reshape(-1)])
        if z.shape != self.mean.shape:
            raise ValueError(f"member has {z.size} values, the model {self.mean.size}")
        std = np.where(self.std > 0, self.std, 1.0)
        return (self.components @ (z - self.mean)) / std

    @staticmethod
    def prior(beta):
        """``0.5 |β|²`` over the last axis (torch or numpy)."""
        return 0.5 * (beta * beta).sum(-1)

    def sample(self, n: int, seed: int | None = None) -> np.ndarray:
        """n random coefficient vectors (n, K), β ~ N(0, I)."""
        return np.random.default_rng(seed).standard_normal((n, self.n_components))

    # ------------------------------------------------------------------ I/O
    def save(self, path, overwrite: bool = False) -> Path:
        """Write to ``path`` (.npz); refuses to replace a file unless ``overwrite=True``."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"model path must end in .npz, got {str(path)!r}")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, mean=self.mean, components=self.components, std=self.std, tets=self.tets,
                 basis=np.array(self.basis), kind=np.array(self.kind), density_scale=self.density_scale,
                 total_variance=self.total_variance, n_training=self.n_training,
                 template_vertices=self._template.vertices, format_version=_FORMAT_VERSION)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "TetShapeDensityModel":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"model file not found: {path}")
        with np.load(path, allow_pickle=False) as z:
            need = ["mean", "components", "std", "tets", "basis", "kind", "density_scale"]
            missing = [k for k in need if k not in z.files]
            if missing:
                raise KeyError(f"{path} is not a tet shape-density model: missing {missing}")
            if int(z["format_version"]) > _FORMAT_VERSION:
                raise ValueError(f"{path}: format {int(z['format_version'])} is newer than {_FORMAT_VERSION}")
            return cls(z["mean"], z["components"], z["std"], z["tets"], [str(b) for b in z["basis"]], str(z["kind"]),
                       float(z["density_scale"]), float(z["total_variance"]), int(z["n_training"]),
                       template_vertices=z["template_vertices"])

    def __repr__(self) -> str:
        return (f"<TetShapeDensityModel: {self.n_vertices} vertices, {len(self.tets)} tets, {self.kind} densities of "
                f"{'/'.join(self.basis)}, {self.n_components} components "
                f"({100 * float(self.explained_variance_ratio.sum()):.1f}% variance), {self.n_training} members>")
