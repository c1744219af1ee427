"""Tests for taichi_xray.pose against scipy.spatial.transform.Rotation and finite differences."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from taichi_xray.pose import (
    ArticulatedPose,
    RigidPose,
    articulated_transform,
    axis_angle_to_matrix,
    euler_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
    rotation_angle,
    rigid_transform,
)

RNG = np.random.default_rng(1234)


def _random_rotvecs(n):
    v = RNG.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ang = RNG.uniform(0, math.pi * 0.999, size=(n, 1))
    return v * ang


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_axis_angle_matches_scipy(dtype, tol):
    rv = _random_rotvecs(50)
    rv = np.concatenate([rv, [[0, 0, 0], [1e-9, 0, 0], [0, 2e-4, -1e-4]]])
    R = axis_angle_to_matrix(torch.tensor(rv, dtype=dtype))
    assert R.dtype == dtype and R.shape == (53, 3, 3)
    np.testing.assert_allclose(R.numpy(), Rotation.from_rotvec(rv).as_matrix(), atol=tol)


def test_axis_angle_batched_shape():
    rv = torch.zeros(2, 4, 3)
    assert axis_angle_to_matrix(rv).shape == (2, 4, 3, 3)


def test_axis_angle_gradient_finite_and_exact_at_zero():
    rv = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    R = axis_angle_to_matrix(rv)
    # dR/dr_i at 0 is the generator [e_i]_x
    for i in range(3):
        (g,) = torch.autograd.grad(R[(i + 2) % 3, (i + 1) % 3], rv, retain_graph=True)
        assert torch.isfinite(g).all()
        expected = torch.zeros(3, dtype=torch.float64)
        expected[i] = 1.0
        torch.testing.assert_close(g, expected)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (rv,))


@pytest.mark.parametrize("scale", [1e-5, 1e-3 * 1.01, 0.3, 2.5])
def test_axis_angle_gradcheck(scale):
    rv = torch.tensor(_random_rotvecs(1)[0] / np.linalg.norm(_random_rotvecs(1)[0]) * scale,
                      dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (rv,))


def test_matrix_to_axis_angle_roundtrip_and_scipy():
    rv = np.concatenate([_random_rotvecs(50), [[0, 0, 0], [math.pi - 1e-7, 0, 0], [0, 1e-8, 0]]])
    Rm = Rotation.from_rotvec(rv).as_matrix()
    out = matrix_to_axis_angle(torch.tensor(Rm)).numpy()
    np.testing.assert_allclose(Rotation.from_rotvec(out).as_matrix(), Rm, atol=1e-10)
    np.testing.assert_allclose(out[:50], Rotation.from_matrix(Rm[:50]).as_rotvec(), atol=1e-9)
    ang = rotation_angle(torch.tensor(Rm)).numpy()
    np.testing.assert_allclose(ang, np.linalg.norm(rv, axis=1), atol=1e-7)


def test_matrix_to_axis_angle_gradcheck():
    R = torch.tensor(Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix(), requires_grad=True)
    assert torch.autograd.gradcheck(matrix_to_axis_angle, (R,))


def test_rotation_6d():
    Rm = Rotation.from_rotvec(_random_rotvecs(10)).as_matrix()
    d6 = matrix_to_rotation_6d(torch.tensor(Rm))
    np.testing.assert_allclose(rotation_6d_to_matrix(d6).numpy(), Rm, atol=1e-12)
    # unnormalised / non-orthogonal input still gives a rotation
    x = torch.tensor(RNG.normal(size=(5, 6)), requires_grad=True)
    R = rotation_6d_to_matrix(x)
    eye = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye)
    np.testing.assert_allclose(torch.linalg.det(R).detach().numpy(), 1.0, atol=1e-12)
    assert torch.autograd.gradcheck(rotation_6d_to_matrix, (x,))


@pytest.mark.parametrize("order", ["xyz", "zyx", "XYZ", "ZYX", "zxz", "YXY"])
def test_euler_matches_scipy(order):
    ang = RNG.uniform(-170, 170, size=(7, 3))
    R = euler_to_matrix(torch.tensor(ang), order).numpy()
    np.testing.assert_allclose(R, Rotation.from_euler(order, ang, degrees=True).as_matrix(), atol=1e-12)


def test_euler_bad_order():
    for bad in ["xy", "xYz", "xxz", "abc"]:
        with pytest.raises(ValueError, match="order"):
            euler_to_matrix(torch.zeros(3), bad)


def test_rigid_transform_matches_scipy_and_formula():
    v = torch.tensor(RNG.normal(size=(20, 3)) * 50)
    rv = torch.tensor([0.2, -0.4, 0.1])
    t = torch.tensor([5.0, -3.0, 2.0], dtype=torch.float64)
    c = torch.tensor([10.0, 20.0, -5.0], dtype=torch.float64)
    out = rigid_transform(v, rv.double(), t, c)
    ref = Rotation.from_rotvec(rv.numpy()).apply(v.numpy() - c.numpy()) + c.numpy() + t.numpy()
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-10)
    R = axis_angle_to_matrix(rv.double())
    torch.testing.assert_close(rigid_transform(v, R, t, c), out)
    with pytest.raises(ValueError, match="rotation"):
        rigid_transform(v, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="vertices"):
        rigid_transform(torch.zeros(3), rv)


def test_rigid_transform_gradcheck():
    v = torch.tensor(RNG.normal(size=(6, 3)), requires_grad=True)
    rv = torch.tensor([0.1, 0.7, -0.3], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.5, -0.5, 0.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rigid_transform, (v, rv, t, c))


def test_rigid_pose_module():
    c = [1.0, 2.0, 3.0]
    pose = RigidPose(rotvec_deg=[0, 0, 90], translation_mm=[10, 0, 0], centre=c, dtype=torch.float64)
    assert abs(pose.angle_deg - 90) < 1e-12
    v = torch.tensor([[2.0, 2.0, 3.0]], dtype=torch.float64)  # c + e_x
    out = pose(v)
    torch.testing.assert_close(out, torch.tensor([[11.0, 3.0, 3.0]], dtype=torch.float64))
    T = pose.homogeneous()
    torch.testing.assert_close(T[:3, :3] @ v[0] + T[:3, 3], out[0])
    out.sum().backward()
    assert pose.rotvec.grad is not None and pose.translation.grad is not None
    torch.testing.assert_close(pose.translation.grad, torch.ones(3, dtype=torch.float64))
    pose.set_(rotvec_deg=[0, 0, 0], translation_mm=[0, 0, 0])
    torch.testing.assert_close(pose(v), v)
    p2 = RigidPose.from_euler_deg([10, 20, 30], "xyz", dtype=torch.float64)
    np.testing.assert_allclose(p2.matrix().detach().numpy(),
                               Rotation.from_euler("xyz", [10, 20, 30], degrees=True).as_matrix(), atol=1e-12)
    with pytest.raises(ValueError, match="rotvec_deg"):
        RigidPose(rotvec_deg=[1, 2])


def test_rigid_pose_float32_device_dtype():
    pose = RigidPose([5, 0, 0], [1, 2, 3])
    v = torch.randn(10, 3)
    assert pose(v).dtype == torch.float32


def _femur_scene():
    # pelvis (part 0) at origin, two "femurs" hanging below hip joints.
    pelvis = np.array([[-50, 0, 0], [50, 0, 0], [0, 20, 0]], float)
    femur_l = np.array([[-40, 0, -10], [-40, 0, -400]], float)
    femur_r = np.array([[40, 0, -10], [40, 0, -400]], float)
    verts = np.concatenate([pelvis, femur_l, femur_r])
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    joints = np.array([[0, 0, 0], [-40, 0, 0], [40, 0, 0]], float)
    return verts, labels, joints


def test_articulated_matches_independent_composition():
    verts, labels, joints = _femur_scene()
    rv_parts = np.array([[0, 0, 0], [0.3, 0.0, 0.1], [-0.2, 0.1, 0.0]])
    g_rv, g_t, g_c = np.array([0.05, -0.1, 0.2]), np.array([3.0, 4.0, 5.0]), np.array([0.0, 10.0, 0.0])
    out = articulated_transform(torch.tensor(verts), torch.tensor(labels), torch.tensor(joints),
                                torch.tensor(rv_parts), [-1, 0, 0], torch.tensor(g_rv),
                                torch.tensor(g_t), torch.tensor(g_c)).numpy()
    ref = np.empty_like(verts)
    for j in range(3):
        m = labels == j
        x = Rotation.from_rotvec(rv_parts[j]).apply(verts[m] - joints[j]) + joints[j]
        if j > 0:  # parent is the pelvis (rotation 0, so local == world)
            x = Rotation.from_rotvec(rv_parts[0]).apply(x - joints[0]) + joints[0]
        ref[m] = Rotation.from_rotvec(g_rv).apply(x - g_c) + g_c + g_t
    np.testing.assert_allclose(out, ref, atol=1e-10)
    # joint centres of the femurs stay attached to the pelvis: hip joint only moves globally
    hip = torch.tensor(joints[1:2])
    hip_posed = rigid_transform(hip, torch.tensor(g_rv), torch.tensor(g_t), torch.tensor(g_c)).numpy()
    femur_top = articulated_transform(torch.tensor(np.concatenate([joints[1:2], verts[:1]])),
                                      torch.tensor([1, 0]), torch.tensor(joints), torch.tensor(rv_parts),
                                      [-1, 0, 0], torch.tensor(g_rv), torch.tensor(g_t), torch.tensor(g_c))
    np.testing.assert_allclose(femur_top[0].numpy(), hip_posed[0], atol=1e-10)


def test_articulated_chain():
    # chain 0 -> 1 -> 2: rotating part 1 by 90 deg about z also carries part 2.
    verts = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])
    joints = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [1.5, 0, 0]], dtype=torch.float64)
    rv = torch.tensor([[0, 0, 0], [0, 0, math.pi / 2], [0, 0, 0]], dtype=torch.float64)
    out = articulated_transform(verts, labels, joints, rv, [-1, 0, 1])
    torch.testing.assert_close(out, torch.tensor([[0.0, 0, 0], [0.5, 0.5, 0], [0.5, 1.5, 0]],
                                                 dtype=torch.float64))
    with pytest.raises(ValueError, match="parent"):
        articulated_transform(verts, labels, joints, rv, [-1, 2, 0])
    with pytest.raises(ValueError, match="labels"):
        articulated_transform(verts, torch.tensor([0, 1, 5]), joints, rv)


def test_articulated_module_gradcheck_and_mask():
    verts, labels, joints = _femur_scene()
    model = ArticulatedPose(labels, joints, parents=[-1, 0, 0], global_centre=[0, 0, 0], dtype=torch.float64)
    model.set_joint_deg(1, [20, 0, 0])
    with pytest.raises(ValueError, match="not articulated"):
        model.set_joint_deg(0, [20, 0, 0])
    v = torch.tensor(verts)
    out = model(v)
    # pelvis unchanged (global pose is identity), femur 2 unchanged, femur 1 rotated about hip
    torch.testing.assert_close(out[:3], v[:3])
    torch.testing.assert_close(out[5:], v[5:])
    ref = Rotation.from_rotvec([math.radians(20), 0, 0]).apply(verts[3:5] - joints[1]) + joints[1]
    np.testing.assert_allclose(out[3:5].detach().numpy(), ref, atol=1e-10)
    (out * torch.tensor(RNG.normal(size=out.shape))).sum().backward()  # norm-free loss
    assert torch.all(model.joint_rotvec.grad[0] == 0)  # root is not articulated
    assert model.joint_rotvec.grad[1].abs().sum() > 0
    assert model.global_pose.rotvec.grad.abs().sum() > 0

    def f(jr, grv, gt):
        return articulated_transform(v, torch.tensor(labels), torch.tensor(joints), jr, [-1, 0, 0], grv, gt)

    jr = torch.tensor(RNG.normal(size=(3, 3)) * 0.3, requires_grad=True)
    grv = torch.tensor([0.1, 0.2, -0.1], dtype=torch.float64, requires_grad=True)
    gt = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (jr, grv, gt))
