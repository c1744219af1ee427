"""Rigid and articulated poses in torch (differentiable, any float dtype/device).

Conventions
-----------
* Rotation matrices act on column vectors: ``x' = R @ x``.  Point clouds are
  stored as rows ``(N, 3)``, so code computes ``x' = x @ R.T``.
* Rotation vectors ("axis-angle", ``rotvec``) are ``axis * angle`` with the
  angle in **radians** (same as ``scipy.spatial.transform.Rotation``);
  helpers with ``_deg`` in their name take degrees.
* Lengths (translations, centres, vertices) are in **mm**.
* Euler angles follow scipy's convention: lowercase ``order`` ("xyz") means
  extrinsic rotations about the fixed axes, uppercase ("XYZ") intrinsic
  rotations about the moving axes.

Everything here is pure torch and works for float32 and float64 on any device;
batch dimensions ``...`` broadcast.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

__all__ = [
    "skew",
    "axis_angle_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "rotation_6d_to_matrix",
    "matrix_to_rotation_6d",
    "euler_to_matrix",
    "rotation_angle",
    "rigid_transform",
    "RigidPose",
    "articulated_transform",
    "ArticulatedPose",
]

# Below this squared angle (rad^2) the Rodrigues coefficients use Taylor series.
_SMALL_ANGLE_SQ = 1e-6


def _check_last(x: torch.Tensor, n: int, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 1 or x.shape[-1] != n:
        raise ValueError(f"{name} must have shape (..., {n}), got {tuple(x.shape)}")


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix ``[v]_x`` with ``[v]_x @ w == cross(v, w)``.

    v: (..., 3) -> (..., 3, 3)."""
    _check_last(v, 3, "v")
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack(
        (torch.stack((o, -z, y), -1), torch.stack((z, o, -x), -1), torch.stack((-y, x, o), -1)), -2
    )


def axis_angle_to_matrix(rotvec: torch.Tensor) -> torch.Tensor:
    """Rotation vector (axis * angle, radians) -> rotation matrix (Rodrigues).

    rotvec: (..., 3) float tensor -> (..., 3, 3), same dtype/device.
    ``R = I + A [k]_x + B [k]_x^2`` with ``A = sin(t)/t``, ``B = (1 - cos t)/t^2``
    evaluated as ``0.5 * sinc(t/2)^2`` (no cancellation); both use Taylor series
    for ``t^2 < 1e-6`` so the value *and the gradient* are finite at zero angle
    (the gradient at 0 is the exact one: dR/dr_i = [e_i]_x)."""
    _check_last(rotvec, 3, "rotvec")
    t2 = (rotvec * rotvec).sum(-1)
    small = t2 < _SMALL_ANGLE_SQ
    # Large-angle branch on a "safe" angle so that neither branch produces NaN gradients.
    t2_safe = torch.where(small, torch.ones_like(t2), t2)
    t = torch.sqrt(t2_safe)
    a_big = torch.sin(t) / t
    h = 0.5 * t
    b_big = 0.5 * (torch.sin(h) / h) ** 2
    a_small = 1.0 - t2 / 6.0 + t2 * t2 / 120.0
    b_small = 0.5 - t2 / 24.0 + t2 * t2 / 720.0
    a = torch.where(small, a_small, a_big)[..., None, None]
    b = torch.where(small, b_small, b_big)[..., None, None]
    k = skew(rotvec)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand(k.shape)
    return eye + a * k + b * (k @ k)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrix -> unit quaternion (w, x, y, z) with w >= 0.

    matrix: (..., 3, 3) -> (..., 4).  Uses the numerically best of the four
    Shepperd candidates, so it is accurate for every angle including 180 deg."""
    if not isinstance(matrix, torch.Tensor) or matrix.shape[-2:] != (3, 3):
        raise ValueError(f"matrix must be a torch tensor of shape (..., 3, 3), got "
                         f"{getattr(matrix, 'shape', type(matrix))}")
    m = matrix
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4 * q_i^2 for i = w, x, y, z
    q_abs_sq = torch.stack(
        (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1
    )
    pos = q_abs_sq > 0  # sqrt with a zero (not NaN) gradient at 0
    q_abs = torch.where(pos, torch.sqrt(torch.where(pos, q_abs_sq, torch.ones_like(q_abs_sq))),
                        torch.zeros_like(q_abs_sq))
    # Each row: the quaternion scaled by 4*q_i, built from candidate i.
    cands = torch.stack(
        (
            torch.stack((q_abs_sq[..., 0], m21 - m12, m02 - m20, m10 - m01), -1),
            torch.stack((m21 - m12, q_abs_sq[..., 1], m10 + m01, m02 + m20), -1),
            torch.stack((m02 - m20, m10 + m01, q_abs_sq[..., 2], m12 + m21), -1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, q_abs_sq[..., 3]), -1),
        ),
        -2,
    )
    floor = torch.tensor(0.1, dtype=m.dtype, device=m.device)
    cands = cands / (2.0 * torch.maximum(q_abs[..., None], floor))
    best = q_abs.argmax(-1)
    idx = best[..., None, None].expand(*best.shape, 1, 4)
    q = torch.gather(cands, -2, idx).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrix -> rotation vector (radians), angle in [0, pi].

    matrix: (..., 3, 3) -> (..., 3).  Goes through the quaternion, so it is
    accurate near 0 and near 180 deg (at exactly 180 deg the sign of the
    axis is arbitrary, as for any axis-angle representation)."""
    q = matrix_to_quaternion(matrix)
    w, xyz = q[..., 0], q[..., 1:]
    n2 = (xyz * xyz).sum(-1)
    small = n2 < 1e-12
    n = torch.sqrt(torch.where(small, torch.ones_like(n2), n2))
    angle = 2.0 * torch.atan2(n, w)
    w_safe = torch.where(small, torch.ones_like(w), w)
    # angle / n  ~  2/w * (1 - n^2/(3 w^2)) for small n (w ~ 1 there)
    factor = torch.where(small, 2.0 / w_safe * (1.0 - n2 / (3.0 * w_safe**2)), angle / n)
    return xyz * factor[..., None]


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """Continuous 6-D rotation representation (Zhou et al. 2019) -> matrix.

    d6: (..., 6), the first two *rows* of the matrix (unnormalised)
    -> (..., 3, 3) via Gram-Schmidt; same convention as pytorch3d.
    Raises nothing for degenerate input but the result is then undefined
    (parallel or zero vectors)."""
    _check_last(d6, 6, "d6")
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = a1 / a1.norm(dim=-1, keepdim=True)
    b2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = b2 / b2.norm(dim=-1, keepdim=True)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), -2)


def matrix_to_rotation_6d(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrix (..., 3, 3) -> 6-D representation (..., 6) (first two rows)."""
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"matrix must have shape (..., 3, 3), got {tuple(matrix.shape)}")
    return matrix[..., :2, :].reshape(*matrix.shape[:-2], 6)


def _axis_matrix(axis: str, angle: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    o, i = torch.zeros_like(angle), torch.ones_like(angle)
    if axis == "x":
        rows = ((i, o, o), (o, c, -s), (o, s, c))
    elif axis == "y":
        rows = ((c, o, s), (o, i, o), (-s, o, c))
    else:
        rows = ((c, -s, o), (s, c, o), (o, o, i))
    return torch.stack([torch.stack(r, -1) for r in rows], -2)


def euler_to_matrix(angles_deg: torch.Tensor, order: str = "xyz") -> torch.Tensor:
    """Euler angles in **degrees** -> rotation matrix, scipy convention.

    angles_deg: (..., 3) angles for the three axes named in ``order``.
    order: 3 letters from x/y/z (lowercase = extrinsic, fixed axes) or
    X/Y/Z (uppercase = intrinsic, moving axes), e.g. "xyz", "ZYX", "zxz".
    Returns (..., 3, 3), equal to
    ``scipy.spatial.transform.Rotation.from_euler(order, angles, degrees=True)``."""
    if not isinstance(order, str) or len(order) != 3:
        raise ValueError(f"order must be a 3-letter string like 'xyz' or 'XYZ', got {order!r}")
    if not (order.islower() or order.isupper()) or set(order.lower()) - set("xyz"):
        raise ValueError(f"order must use only x/y/z, all lower (extrinsic) or all upper "
                         f"(intrinsic) case, got {order!r}")
    if any(order.lower()[i] == order.lower()[i + 1] for i in range(2)):
        raise ValueError(f"consecutive axes in order must differ, got {order!r}")
    _check_last(angles_deg, 3, "angles_deg")
    rad = angles_deg * (math.pi / 180.0)
    mats = [_axis_matrix(ax, rad[..., i]) for i, ax in enumerate(order.lower())]
    if order.islower():  # extrinsic: first rotation applied first -> leftmost is last
        return mats[2] @ mats[1] @ mats[0]
    return mats[0] @ mats[1] @ mats[2]


def rotation_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation angle in radians, in [0, pi], of rotation matrices (..., 3, 3).

    Uses ``atan2(|vee(R - R^T)|/2, (tr R - 1)/2)``, accurate at all angles."""
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"matrix must have shape (..., 3, 3), got {tuple(matrix.shape)}")
    return matrix_to_axis_angle(matrix).norm(dim=-1)


def _as_rotation_matrix(rotation: torch.Tensor, name: str = "rotation") -> torch.Tensor:
    if not isinstance(rotation, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(rotation).__name__}")
    if rotation.shape[-2:] == (3, 3):
        return rotation
    if rotation.shape[-1:] == (3,):
        return axis_angle_to_matrix(rotation)
    raise ValueError(f"{name} must be a rotation matrix (..., 3, 3) or a rotation vector (..., 3), "
                     f"got shape {tuple(rotation.shape)}")


def rigid_transform(
    vertices: torch.Tensor,
    rotation: torch.Tensor,
    translation: Optional[torch.Tensor] = None,
    centre: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Rotate ``vertices`` about ``centre`` then translate: ``v' = R (v - c) + c + t``.

    vertices: (..., N, 3) mm.  rotation: (3, 3) matrix or (3,) rotation vector
    in radians (or batched (..., 3, 3) / (..., 3), broadcast against the
    vertices' batch dims; a trailing (3, 3) is always read as a matrix).  translation: (3,) or (..., 3) mm, default 0.
    centre: (3,) mm rotation centre, default the origin.
    Returns (..., N, 3) with the vertices' dtype/device."""
    if not isinstance(vertices, torch.Tensor) or vertices.ndim < 2 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be a torch tensor of shape (..., N, 3), got "
                         f"{getattr(vertices, 'shape', type(vertices))}")
    R = _as_rotation_matrix(rotation).to(vertices.dtype)
    v = vertices
    if centre is not None:
        centre = torch.as_tensor(centre, dtype=v.dtype, device=v.device)
        if centre.shape[-1:] != (3,):
            raise ValueError(f"centre must have shape (..., 3), got {tuple(centre.shape)}")
        c = centre[..., None, :]
        v = v - c
    out = v @ R.transpose(-1, -2)
    if centre is not None:
        out = out + c
    if translation is not None:
        translation = torch.as_tensor(translation, dtype=v.dtype, device=v.device)
        if translation.shape[-1:] != (3,):
            raise ValueError(f"translation must have shape (..., 3), got {tuple(translation.shape)}")
        out = out + translation[..., None, :]
    return out


class RigidPose(nn.Module):
    """A 6-DoF rigid pose with learnable ``rotvec`` (3,) [rad] and ``translation`` (3,) [mm].

    ``forward(vertices)`` returns ``R(rotvec) (v - centre) + centre + translation``.
    ``centre`` (3,) mm is a fixed buffer (e.g. the mesh centroid), which
    decouples rotation from translation during optimisation.

    Parameters: rotvec_deg: initial rotation vector in degrees (axis * angle);
    translation_mm: initial translation; centre: rotation centre (mm);
    dtype: torch dtype of the parameters (default float32)."""

    def __init__(
        self,
        rotvec_deg: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
        translation_mm: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
        centre: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device | str] = None,
    ) -> None:
        super().__init__()
        rv = torch.as_tensor(rotvec_deg, dtype=dtype, device=device).detach().clone()
        tr = torch.as_tensor(translation_mm, dtype=dtype, device=device).detach().clone()
        ce = torch.as_tensor(centre, dtype=dtype, device=device).detach().clone()
        for name, x in (("rotvec_deg", rv), ("translation_mm", tr), ("centre", ce)):
            if x.shape != (3,):
                raise ValueError(f"{name} must have shape (3,), got {tuple(x.shape)}")
        self.rotvec = nn.Parameter(rv * (math.pi / 180.0))
        self.translation = nn.Parameter(tr)
        self.register_buffer("centre", ce)

    @classmethod
    def from_euler_deg(cls, angles_deg, order: str = "xyz", translation_mm=(0.0, 0.0, 0.0),
                       centre=(0.0, 0.0, 0.0), dtype: torch.dtype = torch.float32, device=None):
        """Build a pose from Euler angles in degrees (scipy convention, see euler_to_matrix)."""
        a = torch.as_tensor(angles_deg, dtype=torch.float64)
        rv = matrix_to_axis_angle(euler_to_matrix(a, order)) * (180.0 / math.pi)
        return cls(rv, translation_mm, centre, dtype=dtype, device=device)

    def matrix(self) -> torch.Tensor:
        """Rotation matrix (3, 3)."""
        return axis_angle_to_matrix(self.rotvec)

    def homogeneous(self) -> torch.Tensor:
        """4x4 matrix T with ``[v';1] = T [v;1]`` (includes the rotation centre)."""
        R = self.matrix()
        t = self.centre - R @ self.centre + self.translation
        T = torch.eye(4, dtype=R.dtype, device=R.device)
        T = torch.cat((torch.cat((R, t[:, None]), 1), T[3:]), 0)
        return T

    @property
    def rotvec_deg(self) -> torch.Tensor:
        """Rotation vector in degrees (3,), detached."""
        return self.rotvec.detach() * (180.0 / math.pi)

    @property
    def angle_deg(self) -> float:
        """Rotation angle in degrees."""
        return float(self.rotvec.detach().norm()) * 180.0 / math.pi

    @property
    def translation_mm(self) -> torch.Tensor:
        """Translation in mm (3,), detached."""
        return self.translation.detach().clone()

    @torch.no_grad()
    def set_(self, rotvec_deg=None, translation_mm=None) -> "RigidPose":
        """Set the pose in place (degrees / mm); returns self."""
        if rotvec_deg is not None:
            self.rotvec.copy_(torch.as_tensor(rotvec_deg, dtype=self.rotvec.dtype,
                                              device=self.rotvec.device) * (math.pi / 180.0))
        if translation_mm is not None:
            self.translation.copy_(torch.as_tensor(translation_mm, dtype=self.translation.dtype,
                                                   device=self.translation.device))
        return self

    def forward(self, vertices: torch.Tensor) -> torch.Tensor:
        """vertices (..., N, 3) mm -> posed vertices (..., N, 3) mm."""
        return rigid_transform(vertices, self.matrix().to(vertices.dtype),
                               self.translation.to(vertices.dtype), self.centre.to(vertices.dtype))

    def extra_repr(self) -> str:
        rv = [round(float(x), 3) for x in self.rotvec_deg]
        tr = [round(float(x), 3) for x in self.translation_mm]
        return f"rotvec_deg={rv}, translation_mm={tr}, centre={[round(float(x), 3) for x in self.centre]}"


# ----------------------------------------------------------------------------- articulated


def _check_parents(parents: Sequence[int], n_parts: int) -> list[int]:
    parents = [int(p) for p in parents]
    if len(parents) != n_parts:
        raise ValueError(f"parents must have one entry per part ({n_parts}), got {len(parents)}")
    for j, p in enumerate(parents):
        if not (p == -1 or 0 <= p < j):
            raise ValueError(f"parents[{j}] = {p}: each part's parent must be -1 (attached to the "
                             f"global frame) or a part with a smaller index")
    return parents


def articulated_transform(
    vertices: torch.Tensor,
    labels: torch.Tensor,
    joint_centres: torch.Tensor,
    part_rotations: torch.Tensor,
    parents: Optional[Sequence[int]] = None,
    global_rotation: Optional[torch.Tensor] = None,
    global_translation: Optional[torch.Tensor] = None,
    global_centre: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Pose a multi-part mesh with a kinematic tree (SMPL-like linear blend with hard weights).

    vertices: (N, 3) rest-pose vertices, mm.
    labels: (N,) int64 part index in [0, P) of every vertex.
    joint_centres: (P, 3) rest-pose joint centre of every part, mm (e.g. the
        hip-joint centre for a femur; ignored for parts whose rotation is identity).
    part_rotations: (P, 3) rotation vectors [rad] or (P, 3, 3) matrices: the
        local rotation of each part about its joint centre, relative to its parent.
    parents: length-P list; parents[j] is the parent part of j (< j) or -1 if
        part j hangs directly from the global frame.  Default: all -1.
    global_rotation / global_translation / global_centre: global rigid pose
        applied to the whole articulated body afterwards (rotvec (3,) or
        matrix (3, 3); mm; mm).

    Part j's world transform is ``G o L_{root} o ... o L_j`` with
    ``L_j(x) = R_j (x - c_j) + c_j``.  Returns posed vertices (N, 3)."""
    if not isinstance(vertices, torch.Tensor) or vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be a torch tensor of shape (N, 3), got "
                         f"{getattr(vertices, 'shape', type(vertices))}")
    labels = torch.as_tensor(labels, device=vertices.device)
    if labels.shape != vertices.shape[:1] or labels.dtype.is_floating_point:
        raise ValueError(f"labels must be an integer tensor of shape ({vertices.shape[0]},), got "
                         f"{tuple(labels.shape)} {labels.dtype}")
    labels = labels.long()
    joint_centres = torch.as_tensor(joint_centres, dtype=vertices.dtype, device=vertices.device)
    if joint_centres.ndim != 2 or joint_centres.shape[1] != 3:
        raise ValueError(f"joint_centres must have shape (P, 3), got {tuple(joint_centres.shape)}")
    P = joint_centres.shape[0]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= P):
        raise ValueError(f"labels must lie in [0, {P}) (one joint centre per part), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    if not isinstance(part_rotations, torch.Tensor):
        raise TypeError(f"part_rotations must be a torch.Tensor, got {type(part_rotations).__name__}")
    if part_rotations.shape == (P, 3):
        Rl = axis_angle_to_matrix(part_rotations.to(vertices.dtype))
    elif part_rotations.shape == (P, 3, 3):
        Rl = part_rotations.to(vertices.dtype)
    else:
        raise ValueError(f"part_rotations must be ({P}, 3) rotation vectors or ({P}, 3, 3) matrices, "
                         f"got shape {tuple(part_rotations.shape)}")
    parents = _check_parents(parents if parents is not None else [-1] * P, P)

    eye = torch.eye(3, dtype=vertices.dtype, device=vertices.device)
    zero = torch.zeros(3, dtype=vertices.dtype, device=vertices.device)
    Rw: list[torch.Tensor] = []
    tw: list[torch.Tensor] = []
    for j in range(P):
        c = joint_centres[j]
        R_loc, t_loc = Rl[j], c - Rl[j] @ c
        if parents[j] < 0:
            Rp, tp = eye, zero
        else:
            Rp, tp = Rw[parents[j]], tw[parents[j]]
        Rw.append(Rp @ R_loc)
        tw.append(Rp @ t_loc + tp)
    R_all = torch.stack(Rw)  # (P, 3, 3)
    t_all = torch.stack(tw)  # (P, 3)
    out = torch.einsum("nij,nj->ni", R_all[labels], vertices) + t_all[labels]
    if global_rotation is not None or global_translation is not None:
        Rg = eye if global_rotation is None else _as_rotation_matrix(global_rotation, "global_rotation")
        out = rigid_transform(out, Rg.to(vertices.dtype), global_translation, global_centre)
    return out


class ArticulatedPose(nn.Module):
    """Global rigid pose plus per-part joint rotations (kinematic tree).

    labels: (N,) int vertex part labels in [0, P).
    joint_centres: (P, 3) rest-pose joint centres, mm.
    parents: length-P parent indices (-1: attached to the global frame); default all -1.
    articulated: length-P bools, which parts may rotate about their joint
        (default: every part with a parent >= 0, i.e. roots are moved only by
        the global pose).  Rotations of non-articulated parts are held at identity.
    global_centre: (3,) centre of the global rotation, mm.

    Learnable parameters: ``global_pose`` (a :class:`RigidPose`) and
    ``joint_rotvec`` (P, 3) rad.  Example (pelvis + two femurs)::

        pose = ArticulatedPose(labels, joint_centres=[pelvis_c, hip_l, hip_r],
                               parents=[-1, 0, 0], global_centre=pelvis_c)
        posed = pose(rest_vertices)
    """

    def __init__(self, labels, joint_centres, parents=None, articulated=None,
                 global_centre=(0.0, 0.0, 0.0), dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        jc = torch.as_tensor(joint_centres, dtype=dtype, device=device).detach().clone()
        if jc.ndim != 2 or jc.shape[1] != 3:
            raise ValueError(f"joint_centres must have shape (P, 3), got {tuple(jc.shape)}")
        P = jc.shape[0]
        self.parents = _check_parents(parents if parents is not None else [-1] * P, P)
        if articulated is None:
            articulated = [p >= 0 for p in self.parents]
        if len(articulated) != P:
            raise ValueError(f"articulated must have {P} entries, got {len(articulated)}")
        lab = torch.as_tensor(labels, device=device)
        if lab.ndim != 1 or lab.dtype.is_floating_point:
            raise ValueError(f"labels must be a 1-D integer array, got {tuple(lab.shape)} {lab.dtype}")
        self.register_buffer("labels", lab.long().clone())
        self.register_buffer("joint_centres", jc)
        self.register_buffer("articulated_mask",
                             torch.as_tensor([bool(a) for a in articulated], dtype=dtype, device=device))
        self.global_pose = RigidPose(centre=global_centre, dtype=dtype, device=device)
        self.joint_rotvec = nn.Parameter(torch.zeros(P, 3, dtype=dtype, device=device))

    @property
    def n_parts(self) -> int:
        return self.joint_centres.shape[0]

    @torch.no_grad()
    def set_joint_deg(self, part: int, rotvec_deg) -> "ArticulatedPose":
        """Set the local rotation (rotation vector in degrees) of one part."""
        if not 0 <= part < self.n_parts:
            raise ValueError(f"part must be in [0, {self.n_parts}), got {part}")
        if not bool(self.articulated_mask[part]):
            raise ValueError(f"part {part} is not articulated (see the 'articulated' argument)")
        self.joint_rotvec[part] = torch.as_tensor(rotvec_deg, dtype=self.joint_rotvec.dtype,
                                                  device=self.joint_rotvec.device) * (math.pi / 180.0)
        return self

    def forward(self, vertices: torch.Tensor) -> torch.Tensor:
        """Rest vertices (N, 3) mm -> posed vertices (N, 3) mm."""
        if vertices.shape[:1] != self.labels.shape:
            raise ValueError(f"vertices has {vertices.shape[0]} rows but labels has {self.labels.shape[0]}")
        rv = (self.joint_rotvec * self.articulated_mask[:, None]).to(vertices.dtype)
        return articulated_transform(
            vertices, self.labels, self.joint_centres.to(vertices.dtype), rv, self.parents,
            self.global_pose.matrix().to(vertices.dtype), self.global_pose.translation.to(vertices.dtype),
            self.global_pose.centre.to(vertices.dtype),
        )
