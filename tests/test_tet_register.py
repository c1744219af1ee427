"""Fitting pose and shape-and-density coefficients of a tetrahedral PCA model (issue 14):
taichi_xray.fit.tet_register.register_tet_model recovers a known pose and known β from images
rendered at them.

The model is built from copies of a small tet mesh (a jittered Kuhn grid, 108 tets) deformed
by one anisotropic scaling (shape) and given one density pattern (a bone-density gradient and
a water offset): the training data vary along exactly two directions, so the model has two
components, one mostly shape and one mostly density. The target is rendered at a known pose
and β through the same pipeline; the fit starts from the identity and the mean.
"""
import numpy as np
import pytest
import torch

import taichi_xray as tx
from taichi_xray.fit.tet_register import register_tet_model, tet_model_pipeline
from taichi_xray.objects.tetmesh import TetMesh
from taichi_xray.objects.tetssm import TetShapeDensityModel
from taichi_xray.physics import Spectrum
from taichi_xray.pose import rigid_transform

from reference_tet import kuhn_grid


def _model(kind):
    rng = np.random.default_rng(1)
    V0, X = kuhn_grid((3, 3, 2), (20.0, 16.0, 20.0), (-30.0, -24.0, -20.0), jitter=0.15, rng=rng)
    c0 = V0.mean(0)
    pts = V0 if kind == "linear" else V0[X].mean(1)

    def member(a, b):
        V = c0 + (V0 - c0) * (1.0 + a * np.array([0.06, -0.04, 0.05]))
        D = np.stack([0.9 + 0.05 * b + 0.0 * pts[:, 0], 0.6 + b * (0.006 * pts[:, 2] + 0.004 * pts[:, 0])], 1)
        return TetMesh(V, X, D, kind=kind)

    ab = rng.uniform(-1.5, 1.5, (6, 2))
    model = TetShapeDensityModel.fit([member(a, b) for a, b in ab])
    return model, member


def _cameras(n=32):
    return [tx.Camera.c_arm(sid=400.0, sdd=700.0, width=n, height=n, pixel_spacing=4.0, lao=a, cran=10.0)
            for a in (-40.0, 50.0)]


@pytest.mark.parametrize("kind", ["linear", "constant"])
def test_pose_and_shape_density_coefficients_are_recovered(kind):
    model, _ = _model(kind)
    assert model.n_components == 2
    cams = _cameras()
    spec = Spectrum.monochromatic(60.0)
    beta_true = np.array([0.9, -0.7])
    rv_true, t_true = np.deg2rad([3.0, -2.0, 4.0]), np.array([2.5, -2.0, 3.0])
    c = model.reference_point
    pipe = tet_model_pipeline(model, cams, spectrum=spec)
    with torch.no_grad():
        v = rigid_transform(torch.as_tensor(model.vertices(beta_true)), torch.as_tensor(rv_true),
                            torch.as_tensor(t_true), torch.as_tensor(c))
        target = pipe.render_torch([v.float()], densities={"tet": torch.as_tensor(model.densities(beta_true)).float()})
    res = register_tet_model(model, cams, target, loss="mse", prior_weight=1e-4, spectrum=spec,
                             schedule=[(2, 40, 1.0, 0.1), (1, 40, 0.3, 0.05)])
    assert res.n_iterations == 80
    np.testing.assert_allclose(res.beta, beta_true, atol=0.05)
    assert np.abs(res.translation - t_true).max() < 0.15, res.translation
    assert np.abs(res.rotvec_deg - np.rad2deg(rv_true)).max() < 0.15, res.rotvec_deg
    # the starting point was far (measured errors at the end: beta 0.02, 0.04 mm, 0.04 deg):
    # the fit moved the data term down by orders of magnitude
    assert res.loss < 1e-3 * res.history[0]


def test_bad_inputs_raise():
    model, _ = _model("constant")
    cams = _cameras(16)
    with pytest.raises(ValueError, match="targets must have shape"):
        register_tet_model(model, cams, np.zeros((1, 16, 16)))
    with pytest.raises(ValueError, match="binning factor"):
        register_tet_model(model, cams, np.zeros((2, 16, 16)), schedule=[(3, 1, 0.1, 0.1)])
    with pytest.raises(ValueError, match="loss"):
        register_tet_model(model, cams, np.zeros((2, 16, 16)), loss="l1")
    with pytest.raises(TypeError, match="TetShapeDensityModel"):
        register_tet_model(object(), cams, np.zeros((2, 16, 16)))
    with pytest.raises(ValueError, match="NaN"):
        register_tet_model(model, cams, np.full((2, 16, 16), np.nan))
