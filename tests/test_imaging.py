"""Image formation after Beer-Lambert through the one pipeline: focal spot, heel effect, absolute
photons, falloff, detector blur and noise (the models themselves are checked in test_source_detector.py;
here the pipeline's use of them is checked against independent predictions)."""
import numpy as np
import pytest
import torch

import taichi_xray as tx
from taichi_xray.physics import Detector, Spectrum
from taichi_xray.physics.detector_model import MTF, DetectorModel
from taichi_xray.physics.imaging import Imaging
from taichi_xray.physics.source import FocalSpot, heel_factors, heel_angles, penumbra_width
from taichi_xray.pipeline import Pipeline

from reference import box, icosphere


def plate_camera(sid, sdd=1000.0, n=200, pixel=0.05):
    return tx.Camera.c_arm(sid=sid, sdd=sdd, width=n, height=8, pixel_spacing=pixel)


def edge_width(profile, pixel_mm, lo=0.1, hi=0.9):
    """10-90 % width (mm) of a monotone edge profile."""
    p = (profile - profile.min()) / (profile.max() - profile.min())
    if p[0] > p[-1]:
        p = p[::-1]
    x = np.arange(len(p)) * pixel_mm
    return float(np.interp(hi, p, x) - np.interp(lo, p, x))


@pytest.mark.parametrize("sid", [500.0, 800.0])
def test_focal_spot_penumbra_equals_the_geometric_prediction(sid):
    """A uniform 2 mm spot: the edge of a thick plate at the isocentre blurs over f (SDD - SOD) / SOD."""
    plate = tx.Mesh(*box((0.0, -50.0, -50.0), (60.0, 50.0, 50.0)), "plate")  # edge at x = 0 through the iso
    cam = plate_camera(sid)
    spot = FocalSpot(2.0, 2.0, "uniform")
    im = Imaging(focal_spot=spot, focal_samples=400, anode="left")
    pipe = Pipeline([plate], cam, materials=["Pb"], spectrum=Spectrum.monochromatic(60.0), imaging=im,
                    output="transmission", physics_dtype=torch.float64)
    T = pipe.render()[0].numpy()
    prof = T[4]
    mag = cam.detector_distance / sid
    pixel_at_det = cam.pixel_spacing
    # the uniform spot's edge spread is linear: 10-90 % = 0.8 x the full penumbra
    expect = 0.8 * penumbra_width(2.0, sid, cam.detector_distance)
    got = edge_width(prof, pixel_at_det)
    assert got == pytest.approx(expect, rel=0.06), (got, expect, mag)
    # without the spot the edge is a step (one pixel)
    sharp = Pipeline([plate], cam, materials=["Pb"], spectrum=Spectrum.monochromatic(60.0), output="transmission")
    assert edge_width(sharp.render()[0].numpy()[4], pixel_at_det) <= 1.5 * pixel_at_det


def test_heel_effect_weights_the_flat_field_per_row():
    """With nothing in the beam (a tiny far-away object), the reading per row follows the heel factors."""
    ball = tx.Mesh(*icosphere(1.0, 1, centre=(0.0, 0.0, 400.0)), "ball")
    cam = tx.Camera.c_arm(sid=1000.0, sdd=1200.0, width=16, height=120, pixel_spacing=3.0)
    spec = Spectrum.tungsten(80, filtration={"Al": 2.5}, bin_width=2.0)
    det = Detector("energy", ("CsI", 0.6))
    im = Imaging(heel=True, anode="top", anode_angle_deg=12.0, kvp=80.0)
    pipe = Pipeline([ball], cam, materials=["water"], spectrum=spec, detector=det, imaging=im, output="intensity",
                    physics_dtype=torch.float64)
    I = pipe.render()[0].numpy()
    e = spec.energies
    h = heel_factors(e, 80.0, 12.0, heel_angles(cam, "top"))
    expect = (spec.photons * det.response(e) * h).sum(1)
    col = I[:, 0]  # far from the ball's shadow
    np.testing.assert_allclose(col, expect, rtol=1e-6)
    assert col[0] < 0.9 * col[-1]  # darker toward the anode (the top)


def test_absolute_photons_and_noise_statistics_through_the_pipeline():
    """mAs -> photons per pixel; compound-Poisson noise: variance = gain^2 S2 / Swank (no blur)."""
    ball = tx.Mesh(*icosphere(1.0, 1, centre=(0.0, 0.0, 400.0)), "ball")
    cam = tx.Camera.c_arm(sid=1000.0, sdd=1200.0, width=64, height=64, pixel_spacing=1.0)
    spec = Spectrum.tungsten(70, filtration={"Al": 2.5}, bin_width=2.0)
    det = Detector("energy")
    model = DetectorModel(pixel_pitch_mm=1.0, swank=0.8, gain=0.01)
    imgs = []
    for seed in (1, 2):
        im = Imaging(mAs=0.5, detector=model, noise="gaussian", seed=seed)
        p = Pipeline([ball], cam, materials=["water"], spectrum=spec, detector=det, imaging=im, output="intensity",
                     physics_dtype=torch.float64)
        imgs.append(p.render()[0].numpy())
    e = spec.energies
    N = spec.photons * 0.5 * (1000.0 / cam.detector_distance) ** 2 * 1.0
    S1, S2 = (N * e).sum(), (N * e * e).sum()
    flat = np.concatenate([imgs[0][:, :20].ravel(), imgs[0][:, -20:].ravel()])
    assert flat.mean() == pytest.approx(0.01 * S1, rel=5e-3)
    d = (imgs[0] - imgs[1])[:, :20].ravel()
    assert d.var() / 2 == pytest.approx(0.01 ** 2 * S2 / 0.8, rel=0.12)
    again = Pipeline([ball], cam, materials=["water"], spectrum=spec, detector=det, output="intensity",
                     imaging=Imaging(mAs=0.5, detector=model, noise="gaussian", seed=1),
                     physics_dtype=torch.float64).render()[0].numpy()
    np.testing.assert_array_equal(again, imgs[0])  # seeded


def test_detector_blur_in_the_line_integral_and_gradients_flow():
    V, F = icosphere(30.0, 3)
    cam = tx.Camera.c_arm(sid=500.0, sdd=800.0, width=48, height=48, pixel_spacing=2.0)
    mtf = MTF.gaussian(2.0)
    im = Imaging(detector=DetectorModel(pixel_pitch_mm=2.0, mtf=mtf))
    pipe = Pipeline([F], cam, materials=["water"], imaging=im, output="transmission", physics_dtype=torch.float64)
    plain = Pipeline([F], cam, materials=["water"], output="transmission", physics_dtype=torch.float64)
    v = torch.tensor(V, dtype=torch.float32, requires_grad=True)
    T = pipe.render_torch([v])[0]
    T0 = plain.render_torch([torch.tensor(V, dtype=torch.float32)])[0].detach()
    ref = mtf.apply(T0, 2.0)  # blur of the transmission = the blurred reading over the (flat) flat field
    np.testing.assert_allclose(T.detach().numpy(), ref.numpy(), rtol=1e-6, atol=1e-7)
    w = torch.linspace(-1, 1, T.numel()).reshape(T.shape).double()
    (T * w).sum().backward()
    v2 = torch.tensor(V, dtype=torch.float32, requires_grad=True)
    (mtf.apply(plain.render_torch([v2])[0], 2.0) * w).sum().backward()
    np.testing.assert_allclose(v.grad.numpy(), v2.grad.numpy(), rtol=1e-5, atol=1e-6 * float(v2.grad.abs().max()))


def test_scatter_adds_the_kernel_estimate_on_the_water_equivalent_thickness():
    from taichi_xray.physics.scatter import KernelScatterModel

    slab = tx.Mesh(*box((-200.0, -100.0, -200.0), (200.0, 100.0, 200.0)), "slab")  # 200 mm of water along y
    cam = tx.Camera.c_arm(sid=1000.0, sdd=1300.0, width=64, height=64, pixel_spacing=4.0)
    spec = Spectrum.tungsten(80, filtration={"Al": 2.5}, bin_width=4.0)
    model = KernelScatterModel(kvp=80.0, air_gap_mm=200.0, sdd_mm=cam.detector_distance)
    kw = dict(materials=["water"], spectrum=spec, output="intensity", physics_dtype=torch.float64)
    prim = Pipeline([slab], cam, **kw).render()[0].numpy()
    withs = Pipeline([slab], cam, imaging=Imaging(scatter=model), **kw).render()[0].numpy()
    # independent: the same model on the primary and the slab's water-equivalent thickness (water: = chord)
    chord = tx.path_length(slab, cam, dtype=torch.float64)
    S = model(prim, chord, cam.pixel_spacing, principal_point=cam.principal_point)
    np.testing.assert_allclose(withs - prim, S, rtol=1e-5, atol=1e-6 * prim.max())
    spr = (withs - prim)[32, 32] / prim[32, 32]
    assert 0.3 * model.amplitude(200.0) < spr < 1.5 * model.amplitude(200.0), (spr, model.amplitude(200.0))
