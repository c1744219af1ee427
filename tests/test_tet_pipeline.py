"""Tetrahedral meshes with varying density through the one pipeline (issue 14): constant and linear
densities against the brute-force per-tetrahedron reference, nested in a surface mesh, and float64
gradients to densities, vertices and pose."""
import numpy as np
import pytest
import torch

import taichi_xray as tx
from taichi_xray.objects.tetmesh import TetMesh
from taichi_xray.physics import Spectrum, get_material
from taichi_xray.pipeline import Pipeline
from taichi_xray.primitives import ellipsoid

from reference_tet import kuhn_grid, tet_integrals

LO, HI = np.array([-30.0, -25.0, -20.0]), np.array([30.0, 25.0, 20.0])


def grid(rng, n=(3, 3, 2)):
    return kuhn_grid(n, (HI - LO) / n, LO, jitter=0.15, rng=rng)


def camera(w=48, h=40):
    return tx.Camera.c_arm(sid=400.0, sdd=700.0, width=w, height=h, pixel_spacing=3.0, lao=25.0, cran=10.0)


BODY = tx.Mesh(*ellipsoid((80.0, 60.0, 70.0), n_lat=16, n_lon=32), "body")


@pytest.mark.parametrize("kind", ["constant", "linear"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_tetrahedral_densities_in_a_body_equal_the_brute_force_integrals(kind, dtype, tol):
    rng = np.random.default_rng(7)
    V, X = grid(rng)
    D = rng.uniform(0, 2, ((len(X) if kind == "constant" else len(V)), 2))
    tm = TetMesh(V, X, D, name="tets", kind=kind)
    cam = camera()
    pipe = Pipeline([BODY, tm], cam, materials=["soft_tissue", None], parents=[-1, 0],
                    spectrum=Spectrum.monochromatic(60.0), output="line_integral", dtype=dtype,
                    physics_dtype=torch.float64)
    LI = pipe.render()[0].numpy()
    rays = cam.pixel_rays().reshape(-1, 3)
    ref = tet_integrals(V, X, D, kind, cam.source, rays).reshape(40, 48, 2)
    inside = tet_integrals(V, X, np.ones((len(X), 2)), "constant", cam.source, rays).reshape(40, 48, 2)[..., 0]
    body = tx.path_length(BODY, cam, dtype=torch.float64)
    mu = {n: get_material(n).mu([60.0])[0] for n in ("soft_tissue", "water", "cortical_bone")}
    expect = mu["soft_tissue"] * (body - inside) + mu["water"] * ref[..., 0] + mu["cortical_bone"] * ref[..., 1]
    assert ref.max() > 20 and pipe.nesting_messages == []  # interior faces are not surfaces to the nesting check
    np.testing.assert_allclose(LI, expect, atol=tol * max(1.0, expect.max()))


def test_density_gradients_constant_and_linear_float64():
    rng = np.random.default_rng(3)
    V, X = grid(rng, (2, 2, 1))
    cam = camera(24, 20)
    for kind, n in (("constant", len(X)), ("linear", len(V))):
        D0 = rng.uniform(0.2, 1.5, (n, 2))
        tm = TetMesh(V, X, D0, name="t", kind=kind)
        pipe = Pipeline([tm], cam, materials=[None], spectrum=Spectrum.monochromatic(50.0), dtype=torch.float64)
        v = torch.tensor(V, dtype=torch.float64)
        d = torch.tensor(D0, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda d: pipe.render_torch([v], densities={"t": d}), (d,), eps=1e-6,
                                        atol=1e-6, rtol=1e-4, nondet_tol=1e-10)


def test_vertex_and_pose_gradients_with_linear_densities_float64():
    """Moving the vertices moves the affine density fields with them (x_ref, the gradient jumps)."""
    from taichi_xray.pose import rigid_transform

    rng = np.random.default_rng(5)
    V, X = grid(rng, (2, 2, 1))
    D = rng.uniform(0.2, 1.5, (len(V), 2))
    tm = TetMesh(V, X, D, name="t", kind="linear")
    cam = camera(24, 20)
    pipe = Pipeline([tm], cam, materials=[None], spectrum=Spectrum.monochromatic(50.0), dtype=torch.float64)
    v0 = torch.tensor(V, dtype=torch.float64)
    rv = torch.tensor([0.05, -0.03, 0.02], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda rv, t: pipe.render_torch([rigid_transform(v0, rv, t)]), (rv, t),
                                    eps=1e-6, atol=1e-5, rtol=1e-4, nondet_tol=1e-10)
    # a rigid motion of the mesh moves the image exactly like the constant-density surface would
    moved = pipe.render_torch([rigid_transform(v0, rv.detach(), t.detach())]).detach()
    tm_moved = TetMesh(rigid_transform(v0, rv.detach(), t.detach()).numpy(), X, D, name="t", kind="linear")
    direct = Pipeline([tm_moved], cam, materials=[None], spectrum=Spectrum.monochromatic(50.0),
                      dtype=torch.float64).render()
    np.testing.assert_allclose(moved.numpy(), direct.numpy(), rtol=1e-10, atol=1e-12)
