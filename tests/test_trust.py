"""Every entry checks its input: orientation, nesting and overlaps, geometry behind the source, the sign
of P, in-place changes between forward and backward. A silent blank, negative or doubled image is the
worst outcome: each case here must give a correct image with a warning, or a clear error."""
import warnings

import numpy as np
import pytest
import torch

import taichi_xray as tx
from taichi_xray.pipeline import NestingError, NestingWarning, Pipeline
from taichi_xray.physics import Spectrum
from taichi_xray.torch import XRayRenderer, path_lengths

from reference import box, icosphere


def camera(n=40):
    return tx.Camera.c_arm(sid=400.0, sdd=700.0, width=n, height=n, pixel_spacing=4.0, lao=20.0, cran=10.0)


def test_inward_faces_in_every_form_are_reoriented_with_a_warning():
    V, F = icosphere(30.0, 3)
    cam = camera()
    ref = tx.path_length(tx.Mesh(V, F), cam)
    assert ref.max() > 55
    with pytest.warns(tx.MeshWarning, match="inward|reoriented|revers"):
        L = tx.path_length([(V, F[:, ::-1])], cam)[0]
    np.testing.assert_allclose(L, ref, atol=1e-4)
    with pytest.warns(tx.MeshWarning):
        Lt = path_lengths(torch.tensor(V, dtype=torch.float32), np.ascontiguousarray(F[:, ::-1]), cam)
    np.testing.assert_allclose(Lt[0].numpy(), ref, atol=1e-4)
    with pytest.warns(tx.MeshWarning):
        r = XRayRenderer([np.ascontiguousarray(F[:, ::-1])], cam, materials=["cortical_bone"])
        img = r([torch.tensor(V, dtype=torch.float32)])
    assert torch.isfinite(img).all() and float(img.min()) >= -1e-6  # never -inf or negative
    mu = tx.physics.get_material("cortical_bone").mu([60.0])[0]
    np.testing.assert_allclose(img[0].numpy(), mu * ref, rtol=1e-4, atol=1e-5)


def test_overlapping_siblings_raise_naming_both_or_add_up_when_allowed():
    body = tx.Mesh(*icosphere(60.0, 3), "body")
    a = tx.Mesh(*icosphere(20.0, 2, centre=(-8.0, 0.0, 0.0)), "bone_a")
    b = tx.Mesh(*icosphere(20.0, 2, centre=(8.0, 0.0, 0.0)), "bone_b")
    kw = dict(materials=["soft_tissue", "cortical_bone", "cortical_bone"], parents=[-1, 0, 0])
    with pytest.raises(NestingError, match=r"'bone_a' and 'bone_b' overlap on \d+ pixels"):
        Pipeline([body, a, b], camera(), **kw).render()
    with pytest.warns(NestingWarning, match="overlap"):
        Pipeline([body, a, b], camera(), overlap="warn", **kw).render()
    allowed = Pipeline([body, a, b], camera(), overlap="allow", output="path_length", **kw).render()
    # allowed: each sibling keeps its own path length (they add up where they overlap)
    np.testing.assert_allclose(allowed[0, 1].numpy(), tx.path_length(a, camera()), atol=1e-4)
    # forgetting the parent is caught too: a bone inside the body without `parent`
    with pytest.raises(NestingError, match="'body' and 'bone_a' overlap|'bone_a' and 'body' overlap"):
        Pipeline([body, a], camera(), materials=["soft_tissue", "cortical_bone"]).render()


def test_child_outside_its_parent_and_self_intersection_are_named():
    body = tx.Mesh(*icosphere(40.0, 3), "body")
    far = tx.Mesh(*icosphere(15.0, 2, centre=(35.0, 0.0, 0.0)), "bone")
    with pytest.raises(NestingError, match=r"'bone' extends outside its parent 'body' on \d+ pixels"):
        Pipeline([body, far], camera(), materials=["soft_tissue", "cortical_bone"], parents=[-1, 0]).render()
    V1, F1 = icosphere(20.0, 2, centre=(-8.0, 0.0, 0.0))
    V2, F2 = icosphere(20.0, 2, centre=(8.0, 0.0, 0.0))
    two = tx.Mesh(np.vstack([V1, V2]), np.vstack([F1, F2 + len(V1)]), "blob")
    with pytest.raises(NestingError, match="'blob' overlaps itself"):
        Pipeline([two], camera(), materials=["water"]).render()


def test_object_behind_the_source_raises_naming_it():
    ball = tx.Mesh(*icosphere(20.0, 2, centre=(0.0, 0.0, 0.0)), "ball")
    cam = camera()
    behind = tx.Mesh(np.asarray(ball.vertices) + 3 * (cam.source - 0.0), ball.faces, "far_ball")
    with pytest.raises(tx.GeometryError, match="'far_ball' lies entirely behind the X-ray source"):
        Pipeline([ball, behind], cam, materials=["water", "water"]).render()


def test_projection_matrix_of_either_sign_sees_the_scene_in_front():
    ball = tx.Mesh(*icosphere(25.0, 2), "ball")
    cam = camera()
    ref = Pipeline([ball], cam, materials=["water"]).render().numpy()
    flipped = tx.Camera.from_projection_matrix(-cam.P, cam.width, cam.height, cam.pixel_spacing)
    with pytest.warns(RuntimeWarning, match="opposite sign"):
        img = Pipeline([ball], flipped, materials=["water"]).render().numpy()
    np.testing.assert_allclose(img, ref, rtol=1e-6, atol=1e-7)
    assert ref.max() > 0.5
    fixed = tx.Camera.from_projection_matrix(-cam.P, cam.width, cam.height, front=ball.vertices)
    np.testing.assert_allclose(fixed.P, cam.P, rtol=1e-12, atol=1e-12)


def test_inplace_change_between_forward_and_backward_raises_like_torch():
    V, F = icosphere(25.0, 2)
    r = XRayRenderer([F], camera(), materials=["water"])
    v = torch.tensor(V, dtype=torch.float32, requires_grad=True)
    w = v * 1.0
    img = r([w])
    with torch.no_grad():
        w.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        img.sum().backward()


def test_interleaved_forwards_and_backwards_give_each_its_own_gradient():
    """The slot buffers are pooled; a backward whose buffers a later forward overwrote rasterizes again."""
    V, F = icosphere(25.0, 2)
    r = XRayRenderer([F], camera(), materials=["water"], spectrum=Spectrum.monochromatic(50.0))
    w = torch.linspace(-1, 1, 40 * 40).reshape(1, 40, 40)
    grads = []
    for shift in (0.0, 7.0):
        v = torch.tensor(V + [shift, 0, 0], dtype=torch.float32, requires_grad=True)
        (r([v]) * w).sum().backward()
        grads.append(v.grad.clone())
    va = torch.tensor(V, dtype=torch.float32, requires_grad=True)
    vb = torch.tensor(V + [7.0, 0, 0], dtype=torch.float32, requires_grad=True)
    la = (r([va]) * w).sum()
    lb = (r([vb]) * w).sum()  # overwrites the pooled slots of la's forward
    la.backward()
    lb.backward()
    torch.testing.assert_close(va.grad, grads[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vb.grad, grads[1], rtol=1e-5, atol=1e-6)


def test_closed_phantoms_at_random_poses_have_no_unbalanced_pixels():
    from taichi_xray import phantoms

    rng = np.random.default_rng(11)
    for ph in (phantoms.pelvis("low"), phantoms.thorax("low")):
        meshes = [tx.Mesh(ph[n].vertices, ph[n].faces, n) for n in ph.names]
        centre = np.concatenate([m.vertices for m in meshes]).mean(0)
        for _ in range(3):
            lao, cran = rng.uniform(-90, 90), rng.uniform(-40, 40)
            cam = tx.Camera.c_arm(sid=1000.0, sdd=1400.0, width=96, height=96, pixel_spacing=4.0, lao=lao, cran=cran,
                                  isocenter=centre + rng.uniform(-20, 20, 3))
            with warnings.catch_warnings():
                warnings.simplefilter("error", tx.MeshWarning)
                r = tx.rasterize(meshes, cam, keep_slots=False, check_balance=True)
            assert r.n_fixed.sum() == 0, (lao, cran, r.n_fixed)
            assert float(r.L.max()) > 10
