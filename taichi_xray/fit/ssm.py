"""PCA statistical shape models (SSM) of triangle meshes in correspondence.

A :class:`ShapeModel` describes vertices (N, 3) mm as

    v(beta) = mean + sum_i beta_i * std_i * PC_i,

with orthonormal principal components PC_i (each flattened to 3N has unit
norm), standard deviations ``std_i`` (mm) and shape coefficients ``beta`` in
units of standard deviations, so the Gaussian prior is ``0.5 * |beta|^2``.
Training shapes must already be in correspondence (same vertex order and
connectivity) and in a common frame: :meth:`ShapeModel.fit` does no alignment.

:func:`synthetic_population` fabricates a population from one template mesh
(for tests and demos when no real data exist); models fitted to it carry
``synthetic=True``, which is saved with the model and shown by ``repr``.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["ShapeModel", "SyntheticPopulation", "synthetic_population"]

_FORMAT_VERSION = 1


def _check_faces(faces, n_vertices: int) -> np.ndarray:
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer):
        raise ValueError(f"faces must be an integer array of shape (M, 3), got {f.shape} {f.dtype}")
    if len(f) and (f.min() < 0 or f.max() >= n_vertices):
        raise ValueError(f"faces index vertices outside [0, {n_vertices})")
    return f.astype(np.int64)


class SyntheticPopulation(list):
    """A list of (N, 3) float64 vertex arrays made by :func:`synthetic_population`.

    Attributes: ``faces`` (M, 3) shared connectivity, ``synthetic`` (always
    True), ``params`` (dict of the generator's arguments and diagnostics)."""

    synthetic = True

    def __init__(self, shapes, faces, params):
        super().__init__(shapes)
        self.faces = faces
        self.params = params

    def as_array(self) -> np.ndarray:
        """(n, N, 3) float64."""
        return np.stack(self)


class ShapeModel:
    """PCA shape model.

    mean: (N, 3) mm.  components: (K, N, 3), orthonormal as (K, 3N) rows.
    std: (K,) mm, decreasing.  faces: (M, 3) int.  synthetic: True when
    built from fabricated data.  total_variance: total variance (mm^2) of the
    training data (for explained-variance ratios; defaults to sum std^2)."""

    def __init__(self, mean, components, std, faces, synthetic: bool = False,
                 total_variance: Optional[float] = None, n_training: int = 0):
        mean = np.asarray(mean, dtype=np.float64)
        components = np.asarray(components, dtype=np.float64)
        std = np.asarray(std, dtype=np.float64)
        if mean.ndim != 2 or mean.shape[1] != 3:
            raise ValueError(f"mean must have shape (N, 3), got {mean.shape}")
        N = mean.shape[0]
        if components.ndim != 3 or components.shape[1:] != (N, 3):
            raise ValueError(f"components must have shape (K, {N}, 3), got {components.shape}")
        if std.shape != (components.shape[0],) or np.any(std < 0):
            raise ValueError(f"std must be non-negative with shape ({components.shape[0]},), got {std.shape}")
        self.mean = mean
        self.components = components
        self.std = std
        self.faces = _check_faces(faces, N)
        self.synthetic = bool(synthetic)
        self.total_variance = float((std**2).sum() if total_variance is None else total_variance)
        self.n_training = int(n_training)
        self._torch_cache: dict = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def fit(cls, shapes: Sequence[np.ndarray], faces, n_components: Union[None, int, float] = None,
            synthetic: Optional[bool] = None) -> "ShapeModel":
        """PCA (via SVD) of shapes in correspondence.

        shapes: sequence of S >= 2 arrays (N, 3) mm, or an (S, N, 3) array.
        faces: (M, 3) shared connectivity.
        n_components: None = all components with non-negligible variance
            (at most S - 1); an int K = the first K; a float in (0, 1] = the
            fewest components explaining at least that fraction of the variance.
        synthetic: mark the model synthetic; default: True iff ``shapes`` is a
            :class:`SyntheticPopulation` (or has ``synthetic = True``)."""
        if synthetic is None:
            synthetic = bool(getattr(shapes, "synthetic", False))
        try:
            X = np.stack([np.asarray(s, dtype=np.float64) for s in shapes])
        except ValueError as e:
            raise ValueError(f"all shapes must have the same shape (N, 3): {e}") from None
        if X.ndim != 3 or X.shape[2] != 3:
            raise ValueError(f"shapes must be arrays of shape (N, 3), got {X.shape[1:]}")
        S, N, _ = X.shape
        if S < 2:
            raise ValueError(f"need at least 2 training shapes, got {S}")
        if not np.all(np.isfinite(X)):
            raise ValueError("training shapes contain NaN or inf")
        faces = _check_faces(faces, N)
        mean = X.mean(0)
        D = (X - mean).reshape(S, 3 * N)
        _, s, Vt = np.linalg.svd(D, full_matrices=False)
        var = s**2 / (S - 1)
        total = float(var.sum())
        tol = s[0] * max(S, 3 * N) * np.finfo(np.float64).eps if len(s) else 0.0
        rank = int(min(np.sum(s > tol), S - 1))
        if rank == 0:
            raise ValueError("training shapes show no variation; cannot build a shape model")
        if n_components is None:
            K = rank
        elif isinstance(n_components, (bool, np.bool_)):
            raise TypeError("n_components must be None, an int or a float fraction")
        elif isinstance(n_components, (int, np.integer)):
            if not 1 <= n_components <= rank:
                raise ValueError(f"n_components must be in [1, {rank}] (rank of the training data), got {n_components}")
            K = int(n_components)
        elif isinstance(n_components, float):
            if not 0.0 < n_components <= 1.0:
                raise ValueError(f"a float n_components is a variance fraction in (0, 1], got {n_components}")
            frac = np.cumsum(var[:rank]) / total
            K = int(min(np.searchsorted(frac, n_components - 1e-12) + 1, rank))
        else:
            raise TypeError(f"n_components must be None, an int or a float fraction, got {type(n_components).__name__}")
        comps = Vt[:K].reshape(K, N, 3)
        return cls(mean, comps, np.sqrt(var[:K]), faces, synthetic=synthetic, total_variance=total, n_training=S)

    # ------------------------------------------------------------------ properties
    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def explained_variance_ratio(self) -> np.ndarray:
        """(K,) fraction of the training variance explained by each component."""
        tv = self.total_variance if self.total_variance > 0 else 1.0
        return self.std**2 / tv

    # ------------------------------------------------------------------ evaluation
    def _torch(self, dtype, device):
        key = (dtype, str(device))
        if key not in self._torch_cache:
            basis = (self.std[:, None] * self.components.reshape(self.n_components, -1))
            self._torch_cache[key] = (torch.as_tensor(self.mean.reshape(-1), dtype=dtype, device=device),
                                      torch.as_tensor(basis, dtype=dtype, device=device))
        return self._torch_cache[key]

    def vertices(self, beta=None):
        """Vertices for shape coefficients ``beta`` (units of std).

        beta: (K',) or (B, K') with K' <= K (missing trailing coefficients are
        0), as a torch tensor (differentiable; result on its dtype/device) or a
        numpy array / sequence (numpy float64 result); None = the mean shape.
        Returns (N, 3) or (B, N, 3) mm."""
        if beta is None:
            return self.mean.copy()
        is_torch = isinstance(beta, torch.Tensor)
        if not is_torch:
            beta = np.asarray(beta, dtype=np.float64)
        if beta.ndim not in (1, 2) or beta.shape[-1] > self.n_components:
            raise ValueError(f"beta must have shape (K',) or (B, K') with K' <= {self.n_components}, "
                             f"got {tuple(beta.shape)}")
        k = beta.shape[-1]
        if is_torch:
            if not beta.is_floating_point():
                raise TypeError(f"beta must be a floating-point tensor, got {beta.dtype}")
            mean, basis = self._torch(beta.dtype, beta.device)
            flat = mean + beta @ basis[:k]
        else:
            basis = self.std[:k, None] * self.components[:k].reshape(k, -1)
            flat = self.mean.reshape(-1) + beta @ basis
        return flat.reshape(*beta.shape[:-1], self.n_vertices, 3)

    def project(self, vertices) -> np.ndarray:
        """Least-squares coefficients (K,) (or (B, K)) of vertices (N, 3) / (B, N, 3), numpy."""
        x = np.asarray(vertices, dtype=np.float64)
        if x.shape[-2:] != (self.n_vertices, 3) or x.ndim not in (2, 3):
            raise ValueError(f"vertices must have shape (N, 3) or (B, N, 3) with N = {self.n_vertices}, got {x.shape}")
        d = (x - self.mean).reshape(*x.shape[:-2], -1)
        std = np.where(self.std > 0, self.std, 1.0)
        return d @ self.components.reshape(self.n_components, -1).T / std

    @staticmethod
    def mahalanobis_prior(beta):
        """Negative log Gaussian prior up to a constant: ``0.5 * sum(beta^2)`` over the last axis.

        beta: (K,) or (B, K), torch (differentiable) or numpy."""
        if isinstance(beta, torch.Tensor):
            return 0.5 * (beta * beta).sum(-1)
        beta = np.asarray(beta, dtype=np.float64)
        return 0.5 * (beta * beta).sum(-1)

    def sample(self, n: int, seed: Optional[int] = None) -> np.ndarray:
        """n random shapes (n, N, 3) with beta ~ N(0, I)."""
        beta = np.random.default_rng(seed).standard_normal((n, self.n_components))
        return self.vertices(beta)

    # ------------------------------------------------------------------ I/O
    def save(self, path, overwrite: bool = False) -> Path:
        """Write the model to ``path`` (must end in .npz); refuses to replace an
        existing file unless ``overwrite=True`` (FileExistsError)."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"shape model path must end in .npz, got {str(path)!r}")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, mean=self.mean, components=self.components, std=self.std, faces=self.faces,
                 synthetic=np.bool_(self.synthetic), total_variance=np.float64(self.total_variance),
                 n_training=np.int64(self.n_training), format_version=np.int64(_FORMAT_VERSION))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "ShapeModel":
        """Read a model written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"shape model file not found: {path}")
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("mean", "components", "std", "faces", "synthetic") if k not in z.files]
            if missing:
                raise KeyError(f"{path} is not a shape model file: missing {missing}")
            version = int(z["format_version"]) if "format_version" in z.files else 1
            if version > _FORMAT_VERSION:
                raise ValueError(f"{path} has shape model format {version}, newer than supported {_FORMAT_VERSION}")
            return cls(z["mean"], z["components"], z["std"], z["faces"], synthetic=bool(z["synthetic"]),
                       total_variance=float(z["total_variance"]) if "total_variance" in z.files else None,
                       n_training=int(z["n_training"]) if "n_training" in z.files else 0)

    def __repr__(self) -> str:
        tag = "SYNTHETIC " if self.synthetic else ""
        ev = float(self.explained_variance_ratio.sum())
        return (f"<{tag}ShapeModel: {self.n_vertices} vertices, {len(self.faces)} faces, "
                f"{self.n_components} components ({100 * ev:.1f}% variance), "
                f"{self.n_training} training shapes{' (fabricated data, not anatomy)' if self.synthetic else ''}>")


def synthetic_population(template_vertices, faces, n: int, seed: int = 0, scale_sd: float = 0.05,
                         displacement_mm: float = 2.0, n_bases: int = 8,
                         kernel_width_mm: Optional[float] = None,
                         max_lipschitz: float = 0.5) -> SyntheticPopulation:
    """Fabricate ``n`` plausible shape variants of one template mesh (same connectivity).

    Each variant is ``x -> c + A diag(s) A^T (y - c)`` applied to
    ``y = x + f(x)``, where

    * c is the template centroid and A its principal axes; the scale factors
      ``s = 1 + scale_sd * N(0, 1)`` (clipped to [0.5, 1.5]) give anisotropic
      size/proportion changes;
    * ``f(x) = sum_j a_j exp(-|x - p_j|^2 / (2 w^2))`` is a smooth displacement
      field of ``n_bases`` Gaussian RBFs centred on random template vertices
      ``p_j`` with width ``w = kernel_width_mm`` (default 30% of the bounding-box
      diagonal); the vector amplitudes ``a_j`` are Gaussian and scaled so the
      expected RMS displacement over the vertices is ``displacement_mm``.

    No inversion: the RBF field's Lipschitz constant is bounded by
    ``L = sum_j |a_j| exp(-1/2) / w``; whenever ``L > max_lipschitz`` (< 1)
    the field is scaled down to ``max_lipschitz``, so ``x + f(x)`` is a
    diffeomorphism (and so is the positive scaling): the surface cannot fold
    or self-intersect (triangles small compared with w keep their orientation).
    The number of variants that needed this clamp is in ``params["n_clamped"]``.

    template_vertices: (N, 3) mm; faces: (M, 3) int.  Returns a
    :class:`SyntheticPopulation` (list of n (N, 3) float64 arrays, ``synthetic=True``)."""
    v = np.asarray(template_vertices, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) < 4:
        raise ValueError(f"template_vertices must have shape (N, 3) with N >= 4, got {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("template_vertices contain NaN or inf")
    f = _check_faces(faces, len(v))
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if scale_sd < 0 or displacement_mm < 0:
        raise ValueError(f"scale_sd and displacement_mm must be >= 0, got {scale_sd}, {displacement_mm}")
    if not isinstance(n_bases, (int, np.integer)) or n_bases < 1:
        raise ValueError(f"n_bases must be a positive int, got {n_bases!r}")
    if not 0 < max_lipschitz < 1:
        raise ValueError(f"max_lipschitz must be in (0, 1), got {max_lipschitz}")
    rng = np.random.default_rng(seed)
    c = v.mean(0)
    _, _, Vt = np.linalg.svd(v - c, full_matrices=False)
    A = Vt.T  # columns = principal axes
    diag = float(np.linalg.norm(v.max(0) - v.min(0)))
    w = 0.3 * diag if kernel_width_mm is None else float(kernel_width_mm)
    if not w > 0:
        raise ValueError(f"kernel_width_mm must be > 0, got {kernel_width_mm}")
    shapes, n_clamped = [], 0
    for _ in range(n):
        centres = v[rng.choice(len(v), size=n_bases, replace=n_bases > len(v))]
        phi = np.exp(-((v[:, None, :] - centres[None]) ** 2).sum(-1) / (2 * w * w))  # (N, J)
        sigma_a = displacement_mm / math.sqrt(3.0 * float((phi**2).sum(1).mean()))
        a = rng.standard_normal((n_bases, 3)) * sigma_a
        L = float(np.linalg.norm(a, axis=1).sum()) * math.exp(-0.5) / w
        if L > max_lipschitz:
            a *= max_lipschitz / L
            n_clamped += 1
        y = v + phi @ a
        s = np.clip(1.0 + scale_sd * rng.standard_normal(3), 0.5, 1.5)
        shapes.append(c + ((y - c) @ A) * s @ A.T)
    params = dict(n=int(n), seed=seed, scale_sd=scale_sd, displacement_mm=displacement_mm, n_bases=int(n_bases),
                  kernel_width_mm=w, max_lipschitz=max_lipschitz, n_clamped=n_clamped)
    return SyntheticPopulation(shapes, f, params)
