"""Reading X-ray images with their geometry (taichi_xray.io.xray) and writing DRRs as DICOM
(taichi_xray.io.dicom). References: an independent numpy implementation of the C-arm geometry written
here from DICOM PS3.3 C.8.7.5.1.2, analytic sphere chords, and hand-built pydicom data sets."""
import math
import warnings

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from scipy import ndimage  # noqa: E402

from taichi_xray.camera import Camera  # noqa: E402
from taichi_xray.imageio import save_npy, save_png, save_projection_matrix, to_uint  # noqa: E402
from taichi_xray.io.dicom import DicomTagError, carm_parameters, write_dicom  # noqa: E402
from taichi_xray.io.xray import detect_polarity, read_xray, shutter_mask  # noqa: E402

W, H = 96, 80


def sphere_line_integral(cam, centre=(10.0, -5.0, 20.0), radius=60.0, mu=0.02):
    """mu * chord of a sphere along every pixel ray (analytic), (H, W) float64."""
    d = cam.pixel_rays()
    oc = np.asarray(centre) - cam.source
    t = d @ oc
    return mu * 2.0 * np.sqrt(np.clip(radius**2 - (oc @ oc - t**2), 0.0, None))


def dicom_projection(X, primary, secondary, sid, sdd, ps, width, height, radiological=True):
    """Pixel (u, v) of LPS points X (N, 3) from the DICOM definitions, by ray-plane intersection.

    PS3.3 C.8.7.5.1.2: 0/0 = the patient faces the detector; primary = longitude in the transaxial
    plane (+90 = patient's left, LAO), secondary = latitude in the sagittal plane (+90 = cranial);
    isocentre at the origin, source at distance sid, detector centre at sdd from the source. Annex
    FFF: images are patient oriented, heads-up (rows run toward the feet); at AP the patient's right
    is on the image's left (radiological)."""
    a, b = math.radians(primary), math.radians(secondary)
    n = np.array([math.sin(a) * math.cos(b), -math.cos(a) * math.cos(b), math.sin(b)])  # iso -> detector
    S, D = -sid * n, (sdd - sid) * n
    feet = np.array([0.0, 0.0, -1.0])
    ev = feet - n * (feet @ n)
    ev /= np.linalg.norm(ev)
    eu = np.cross(n, ev)  # at AP: +x (patient's left) toward higher columns
    if not radiological:
        eu = -eu
    X = np.atleast_2d(X)
    t = (n @ (D - S)) / ((X - S) @ n)
    Y = S + t[:, None] * (X - S)
    u = (width - 1) / 2 + (Y - D) @ eu / ps
    v = (height - 1) / 2 + (Y - D) @ ev / ps
    return np.stack([u, v], axis=1)


def xa_dataset(pixels, *, primary=30.0, secondary=-20.0, sid=750.0, sdd=1100.0, ps=0.8,
               pir="LIN", slope=None, intercept=None, modality="XA", photometric="MONOCHROME2", **tags):
    """An XA (or DX/CR) data set assembled by hand from the standard's attributes (not our writer)."""
    pixels = np.asarray(pixels, dtype=np.uint16)
    meta = FileMetaDataset()
    cls = {"XA": "1.2.840.10008.5.1.4.1.1.12.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1",
           "CR": "1.2.840.10008.5.1.4.1.1.1"}[modality]
    meta.MediaStorageSOPClassUID = cls
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = cls, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName, ds.PatientID = "TEST^HAND", "HAND1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    if pir is not None:
        ds.PixelIntensityRelationship = pir
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
    if primary is not None:
        ds.PositionerPrimaryAngle = str(primary)
    if secondary is not None:
        ds.PositionerSecondaryAngle = str(secondary)
    if sid is not None:
        ds.DistanceSourceToPatient = str(sid)
    if sdd is not None:
        ds.DistanceSourceToDetector = str(sdd)
    if ps is not None:
        ds.ImagerPixelSpacing = [str(ps), str(ps)]
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


def save(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return path


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


# --------------------------------------------------------------------------- round trips
CASES = [("XA", "MONOCHROME2", True), ("XA", "MONOCHROME2", False), ("RF", "MONOCHROME2", True),
         ("DX", "MONOCHROME2", True), ("DX", "MONOCHROME2", False), ("DX", "MONOCHROME1", True),
         ("DX", "MONOCHROME1", False)]


def quantisation_bound(L, log_stored, bits=16):
    """Per-pixel bound on |L_read - L| from 16-bit quantisation (see write_dicom's docstring)."""
    top = 2**bits - 1
    if log_stored:
        return np.full_like(L, 0.5 * (L.max() - L.min()) / top * (1 + 1e-6) + 1e-12)
    T = np.exp(-L)
    half = 0.5 * T.max() / top
    return -np.log1p(-half / T) * (1 + 1e-6) + 1e-12


@pytest.mark.parametrize("modality,photometric,log_stored", CASES)
def test_roundtrip_image_and_geometry(tmp_path, modality, photometric, log_stored):
    cam = Camera.c_arm(sid=800, sdd=1200, width=W, height=H, pixel_spacing=1.5, lao=30, cran=-15)
    L = sphere_line_integral(cam)
    p = write_dicom(tmp_path / "drr.dcm", L, cam, modality=modality, photometric=photometric,
                    log_stored=log_stored)
    x = read_xray(p)
    bound = quantisation_bound(L, log_stored)
    assert np.all(np.abs(x.line_integral - L) <= bound)
    assert np.abs(x.line_integral - L).max() > 0  # really quantised (the check is not vacuous)
    assert np.max(np.abs(x.camera.P - cam.P)) / np.max(np.abs(cam.P)) < 1e-6
    assert x.mask.all() and x.line_integral.shape == (H, W)
    assert x.polarity == ("dense_dark" if modality in ("XA", "RF") else "dense_bright")
    ds = pydicom.dcmread(p)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian and ds.PhotometricInterpretation == photometric
    assert ds.Modality == modality and ds.PixelIntensityRelationship == ("LOG" if log_stored else "LIN")
    assert float(ds.PositionerPrimaryAngle) == pytest.approx(30) and float(ds.PositionerSecondaryAngle) == pytest.approx(-15)

    # the same file with its private block removed: only the standard tags are left
    for el in list(ds):
        if el.tag.group == 0x0071:
            del ds[el.tag]
    q = save(ds, tmp_path / "std.dcm")
    step = (L.max() - L.min()) / 65535
    y = read_xray(q, log_scale=step if (log_stored and modality == "DX") else None)
    assert y.meta["geometry_source"] == "standard tags"
    assert np.max(np.abs(y.camera.P - cam.P)) / np.max(np.abs(cam.P)) < 1e-6
    # the sphere is in air: the unattenuated estimate is exact, the image within quantisation
    assert np.all(np.abs(y.line_integral - L) <= bound + 1e-9)


def test_roundtrip_rendered_mesh(tmp_path):
    """A DRR from the rasterizer (icosphere path lengths) through DICOM and back."""
    import taichi_xray as tx
    from taichi_xray.primitives import icosphere

    cam = Camera.c_arm(sid=700, sdd=1000, width=64, height=48, pixel_spacing=2.0, lao=-40, cran=10)
    L = 0.02 * np.asarray(tx.path_length(tx.Mesh(*icosphere(50, 3)), cam), dtype=np.float64)
    p = write_dicom(tmp_path / "mesh.dcm", L, cam, modality="XA", log_stored=True)
    x = read_xray(p)
    assert np.all(np.abs(x.line_integral - L) <= quantisation_bound(L, True))
    assert np.allclose(x.camera.P, cam.P, rtol=0, atol=1e-9 * np.abs(cam.P).max())


# --------------------------------------------------------------------------- hand-built DICOM geometry
def test_handbuilt_xa_geometry_matches_dicom_definitions(tmp_path):
    q = np.full((H, W), 4000, dtype=np.uint16)
    p = save(xa_dataset(q, primary=30.0, secondary=-20.0, sid=750.0, sdd=1100.0, ps=0.8), tmp_path / "hand.dcm")
    x = read_xray(p, shutter="none")
    pts = np.array([[80.0, 0, 0], [-80.0, 0, 0], [0, 0, 90.0], [0, -60.0, 0], [25.0, 40.0, -35.0]])
    uv, w = x.camera.project(pts)
    ref = dicom_projection(pts, 30.0, -20.0, 750.0, 1100.0, 0.8, W, H)
    assert np.all(w > 0)
    assert np.allclose(uv, ref, atol=1e-8)
    c = ((W - 1) / 2, (H - 1) / 2)
    # patient's left appears right of centre, the head above it; at LAO the detector is on the left,
    # so the left point is nearer the detector: less magnified than the right one
    assert uv[0, 0] > c[0] and uv[1, 0] < c[0] and uv[2, 1] < c[1]
    assert abs(uv[0, 0] - c[0]) < abs(uv[1, 0] - c[0])
    # LAO 30 / CAUD 20: the source is on the patient's right, posterior, toward the head
    assert x.camera.source[0] < 0 and x.camera.source[1] > 0 and x.camera.source[2] > 0
    assert x.meta["lao"] == 30 and x.meta["cran"] == -20 and x.meta["geometry_source"] == "standard tags"


@pytest.mark.parametrize("primary,secondary", [(0.0, 0.0), (90.0, 0.0), (-45.0, 30.0), (135.0, -25.0)])
def test_handbuilt_angles(tmp_path, primary, secondary):
    p = save(xa_dataset(np.full((H, W), 100, np.uint16), primary=primary, secondary=secondary),
             tmp_path / "a.dcm")
    x = read_xray(p, shutter="none")
    pts = np.array([[30.0, -20.0, 10.0], [-50.0, 40.0, -60.0], [0.0, 0.0, 0.0]])
    assert np.allclose(x.camera.project(pts)[0], dicom_projection(pts, primary, secondary, 750, 1100, 0.8, W, H),
                       atol=1e-8)
    if primary == 90.0:  # detector at the patient's left: the left point is on the axis, anterior is left
        uv = x.camera.project(np.array([[80.0, 0, 0], [0, -60.0, 0]]))[0]
        assert uv[0, 0] == pytest.approx((W - 1) / 2) and uv[1, 0] < (W - 1) / 2


def test_patient_orientation_decides_left_right(tmp_path):
    q = np.full((H, W), 100, np.uint16)
    p = save(xa_dataset(q, primary=0.0, secondary=0.0, PatientOrientation=["R", "F"]), tmp_path / "po.dcm")
    x = read_xray(p, shutter="none")
    assert x.meta["radiological"] is False and "Patient Orientation" in x.meta["radiological_source"]
    uv = x.camera.project(np.array([[80.0, 0, 0]]))[0]
    assert uv[0, 0] < (W - 1) / 2  # the patient's left on the image's left, as the tag says
    ref = dicom_projection(np.array([[80.0, 0, 0]]), 0, 0, 750, 1100, 0.8, W, H, radiological=False)
    assert np.allclose(uv, ref)
    assert read_xray(p, shutter="none", radiological=True).meta["radiological"] is True
    bad = save(xa_dataset(q, primary=0.0, secondary=0.0, PatientOrientation=["L", "H"]), tmp_path / "up.dcm")
    with pytest.raises(DicomTagError, match="head toward the bottom"):
        read_xray(bad)


# --------------------------------------------------------------------------- errors and overrides
@pytest.mark.parametrize("keyword,tag,arg,value", [
    ("DistanceSourceToDetector", "(0018,1110)", "sdd=", 1100.0),
    ("DistanceSourceToPatient", "(0018,1111)", "sid=", 750.0),
    ("PositionerPrimaryAngle", "(0018,1510)", "lao=", 30.0),
    ("PositionerSecondaryAngle", "(0018,1511)", "cran=", -20.0),
    ("ImagerPixelSpacing", "(0018,1164)", "pixel_spacing=", 0.8),
])
def test_missing_tag_names_tag_and_keyword_and_override_works(tmp_path, keyword, tag, arg, value):
    ds = xa_dataset(np.full((H, W), 100, np.uint16))
    del ds[keyword]
    p = save(ds, tmp_path / "m.dcm")
    with pytest.raises(DicomTagError) as e:
        read_xray(p)
    assert tag in str(e.value) and arg in str(e.value)
    x = read_xray(p, shutter="none", **{arg[:-1]: value})
    ref = Camera.c_arm(sid=750, sdd=1100, width=W, height=H, pixel_spacing=0.8, lao=30, cran=-20)
    assert np.allclose(x.camera.P, ref.P, atol=1e-9 * np.abs(ref.P).max())
    assert arg[:-1] in x.meta["overridden"]
    # an override replaces a present tag too
    y = read_xray(save(xa_dataset(np.full((H, W), 100, np.uint16)), tmp_path / "o.dcm"), shutter="none", sdd=1300.0)
    assert y.camera.detector_distance == pytest.approx(1300.0) and "sdd" in y.meta["overridden"]
    # no geometry wanted: no error
    assert read_xray(p, geometry=False, shutter="none").camera is None


def test_missing_intensity_relationship(tmp_path):
    p = save(xa_dataset(np.full((H, W), 100, np.uint16), modality="CR", pir=None), tmp_path / "cr.dcm")
    with pytest.raises(DicomTagError, match=r"\(0028,1040\).*log_stored="):
        read_xray(p, geometry=False)
    assert read_xray(p, geometry=False, log_stored=False, polarity="dense_dark", I0=200.0,
                     shutter="none").line_integral == pytest.approx(np.log(2.0))


def test_rescale_slope_intercept_linear(tmp_path, rng):
    q = rng.integers(1000, 60000, size=(H, W)).astype(np.uint16)
    q[:5, :] = 60000  # an unattenuated strip
    p = save(xa_dataset(q, slope=0.5, intercept=100.0), tmp_path / "r.dcm")
    x = read_xray(p, shutter="none", I0=0.5 * 60000 + 100.0)
    assert np.allclose(x.line_integral, -np.log((0.5 * q + 100.0) / (0.5 * 60000 + 100.0)), rtol=0, atol=1e-12)
    y = read_xray(p, shutter="none")  # I0 estimated: the brightest 1 % is the strip
    assert y.I0 == pytest.approx(0.5 * 60000 + 100.0)
    assert y.meta["polarity"] == "dense_dark" and y.meta["calibration"].startswith("Rescale")
    z = read_xray(p, shutter="none", rescale=(1.0, 0.0), I0=60000.0)
    assert np.allclose(z.line_integral, -np.log(q / 60000.0), atol=1e-12)


def test_monochrome1_inversion(tmp_path, rng):
    """The same exposure stored as MONOCHROME2 (higher = denser) and MONOCHROME1 (inverted)."""
    cam = Camera.c_arm(sid=750, sdd=1100, width=W, height=H, pixel_spacing=0.8, lao=0, cran=0)
    L = sphere_line_integral(cam, centre=(0, 0, 0), radius=12)  # air around it in the central box
    v = np.rint(L / L.max() * 4000).astype(np.uint16)  # log-type values, dense = high
    kw = dict(modality="CR", pir=None, primary=0.0, secondary=0.0)
    p2 = save(xa_dataset(v, photometric="MONOCHROME2", **kw), tmp_path / "m2.dcm")
    p1 = save(xa_dataset(4095 - v, photometric="MONOCHROME1", **kw), tmp_path / "m1.dcm")
    a = read_xray(p2, log_stored=True, shutter="none")
    b = read_xray(p1, log_stored=True, shutter="none")
    assert a.polarity == b.polarity == "dense_bright"  # detected: the air plateau is dark in both displays
    assert "detected" in a.meta["polarity_source"]
    assert np.array_equal(a.line_integral, b.line_integral)
    assert np.allclose(a.line_integral, v.astype(float), atol=0)
    # DX with the Pixel Intensity Relationship Sign: the tag decides, no guessing
    kw = dict(modality="DX", pir="LOG", primary=0.0, secondary=0.0)
    c = read_xray(save(xa_dataset(4095 - v, photometric="MONOCHROME1", PixelIntensityRelationshipSign=1, **kw),
                       tmp_path / "dx1.dcm"), shutter="none")
    assert c.meta["polarity_source"].startswith("Pixel Intensity Relationship Sign")
    assert np.array_equal(c.line_integral, a.line_integral) and c.polarity == "dense_bright"
    # and polarity= overrides: read as if dense were dark -> the negated image (shifted to >= 0)
    d = read_xray(p2, log_stored=True, polarity="dense_dark", shutter="none", I0=4000.0)
    assert np.allclose(d.line_integral, 4000.0 - v)


def test_multiframe_frame_selection(tmp_path):
    frames = np.stack([np.full((H, W), 100 * (k + 1), np.uint16) for k in range(3)])
    ds = xa_dataset(frames, primary=10.0, secondary=5.0, PositionerMotion="DYNAMIC",
                    PositionerPrimaryAngleIncrement=["0", "10", "25"],
                    PositionerSecondaryAngleIncrement=["0", "-2", "-4"])
    p = save(ds, tmp_path / "mf.dcm")
    x = read_xray(p, frame=2, shutter="none", I0=1000.0)
    assert np.all(x.raw == 300) and x.meta["n_frames"] == 3
    assert x.meta["lao"] == pytest.approx(35.0) and x.meta["cran"] == pytest.approx(1.0)
    ref = Camera.c_arm(sid=750, sdd=1100, width=W, height=H, pixel_spacing=0.8, lao=35, cran=1)
    assert np.allclose(x.camera.P, ref.P, atol=1e-9 * np.abs(ref.P).max())
    assert np.allclose(x.line_integral, -np.log(0.3))
    with pytest.raises(ValueError, match="3 frame"):
        read_xray(p, frame=3)
    # one increment value = the average change per frame (C.8.7.5.1.3)
    ds.PositionerPrimaryAngleIncrement, ds.PositionerSecondaryAngleIncrement = "7.5", "0"
    y = read_xray(save(ds, tmp_path / "mf1.dcm"), frame=2, shutter="none", I0=1000.0)
    assert y.meta["lao"] == pytest.approx(25.0)


# --------------------------------------------------------------------------- shutters
def test_shutter_tags_rectangular_circular_polygonal(tmp_path):
    q = np.full((H, W), 1000, np.uint16)
    rr, cc = np.mgrid[0:H, 0:W]
    rect = save(xa_dataset(q, ShutterShape="RECTANGULAR", ShutterLeftVerticalEdge=11, ShutterRightVerticalEdge=80,
                           ShutterUpperHorizontalEdge=6, ShutterLowerHorizontalEdge=70), tmp_path / "r.dcm")
    m = read_xray(rect).mask
    assert np.array_equal(m, (cc >= 10) & (cc <= 79) & (rr >= 5) & (rr <= 69))
    circ = save(xa_dataset(q, ShutterShape="CIRCULAR", CenterOfCircularShutter=[41, 49], RadiusOfCircularShutter=30),
                tmp_path / "c.dcm")
    m = read_xray(circ).mask
    assert np.array_equal(m, (rr - 40) ** 2 + (cc - 48) ** 2 <= 900)
    both = save(xa_dataset(q, ShutterShape=["RECTANGULAR", "CIRCULAR"], ShutterLeftVerticalEdge=11,
                           ShutterRightVerticalEdge=80, ShutterUpperHorizontalEdge=6, ShutterLowerHorizontalEdge=70,
                           CenterOfCircularShutter=[41, 49], RadiusOfCircularShutter=38), tmp_path / "b.dcm")
    m = read_xray(both).mask  # shapes combine by intersection (C.7.6.11)
    assert np.array_equal(m, (cc >= 10) & (cc <= 79) & (rr >= 5) & (rr <= 69) & ((rr - 40) ** 2 + (cc - 48) ** 2 <= 38**2))
    poly = save(xa_dataset(q, ShutterShape="POLYGONAL", VerticesOfThePolygonalShutter=[11, 11, 11, 81, 71, 46]),
                tmp_path / "p.dcm")
    m = read_xray(poly).mask
    assert m[10, 46] and m[40, 46] and not m[40, 10] and not m[5, 46] and m.sum() == pytest.approx(0.5 * 60 * 70, rel=0.05)
    coll = save(xa_dataset(q, CollimatorShape="RECTANGULAR", CollimatorLeftVerticalEdge=2, CollimatorRightVerticalEdge=90,
                           CollimatorUpperHorizontalEdge=3, CollimatorLowerHorizontalEdge=77), tmp_path / "k.dcm")
    m = read_xray(coll).mask  # X-Ray Collimator Module (C.8.7.3), same coordinates
    assert np.array_equal(m, (cc >= 1) & (cc <= 89) & (rr >= 2) & (rr <= 76))


def synthetic_field(shape, kind, rng, angle=0.0, blur=1.5, noise=0.01, collimated=6.0, blank=None):
    """A collimated exposure: anatomy-like content in a field of ~75 % of the image, a strongly
    attenuating collimator (L = ``collimated``) outside; blurred in intensity (penumbra and
    detector blur act on intensity), with Gaussian noise of ``noise`` relative to the open beam.
    Returns (intensity I/I0, true field)."""
    Hs, Ws = shape
    yy, xx = np.mgrid[0:Hs, 0:Ws].astype(float)
    cy, cx = (Hs - 1) / 2, (Ws - 1) / 2
    if kind == "rect":
        s = math.sqrt(0.75)
        th = math.radians(angle)
        u = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
        v = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
        field = (np.abs(u) <= s * Ws / 2 * 0.97) & (np.abs(v) <= s * Hs / 2 / 0.97)
    else:
        r = math.sqrt(0.75 * Hs * Ws / math.pi)
        field = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    content = np.zeros(shape)
    for _ in range(6):  # soft-tissue and bone blobs
        y0, x0 = rng.uniform(0.15, 0.85) * Hs, rng.uniform(0.15, 0.85) * Ws
        content += rng.uniform(0.5, 2.0) * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * rng.uniform(8, 25) ** 2))
    content[:, : Ws // 6] *= 0.1  # some air inside the field
    inten = np.exp(-np.where(field, content, collimated))
    inten = ndimage.gaussian_filter(inten, blur) + rng.normal(0, noise, shape)
    if blank is not None:
        inten[~field] = blank
    return inten, field


@pytest.mark.parametrize("kind,angle", [("rect", 0.0), ("rect", 12.0), ("circle", 0.0)])
def test_shutter_detection_synthetic(rng, kind, angle):
    inten, field = synthetic_field((200, 240), kind, rng, angle=angle)
    assert 0.70 < field.mean() < 0.80
    assert iou(shutter_mask(inten, kind="intensity"), field) >= 0.97
    L = -np.log(np.clip(inten, 1e-4, None))  # the same as line integrals
    assert iou(shutter_mask(L), field) >= 0.97
    # a dense object right at one field edge does not cut into the field (local threshold + hull)
    inten2 = inten.copy()
    inten2[80:120, 10:60] *= 0.15
    assert iou(shutter_mask(inten2, kind="intensity"), field) >= 0.97


def test_shutter_detection_blanked_and_absent(rng):
    inten, field = synthetic_field((160, 160), "rect", rng, blank=0.0)  # blanked to 0
    assert iou(shutter_mask(inten, kind="intensity"), field) >= 0.97
    assert iou(shutter_mask(inten, kind="any"), field) >= 0.97
    # no collimation, air all around the object: no shutter (the border is the unattenuated side)
    cam = Camera.c_arm(sid=750, sdd=1100, width=120, height=100, pixel_spacing=0.8)
    L = sphere_line_integral(cam, centre=(0, 0, 0), radius=25) + rng.normal(0, 0.01, (100, 120))
    assert shutter_mask(L).all() and shutter_mask(np.exp(-L), kind="intensity").all()
    # the same read with the wrong sense would be a (wrong) shutter: the kind matters
    assert not shutter_mask(L, kind="intensity").all()


def test_read_detects_shutter_and_estimates_I0_inside(tmp_path, rng):
    inten, field = synthetic_field((120, 140), "rect", rng)
    q = np.rint(np.clip(inten, 0, None) * 60000).astype(np.uint16)  # linear detector counts, collimated = dark
    p = save(xa_dataset(q, ps=0.5), tmp_path / "col.dcm")
    x = read_xray(p)
    assert x.meta["mask_source"] == "detected" and iou(x.mask, field) >= 0.97
    # I0: the open-beam (air strip) level inside the field, not the collimated border
    assert x.I0 == pytest.approx(60000, rel=0.02)
    assert np.all(x.line_integral >= 0)
    # the same exposure stored as a log image (XA LOG, rescale to ln(I/I0)): same field
    y = read_xray(save(xa_dataset(np.rint((np.log(np.clip(inten, 1e-3, None)) + 7) * 9000).astype(np.uint16),
                                  ps=0.5, pir="LOG", slope="1.1111111111e-4", intercept=-7.0), tmp_path / "log.dcm"))
    assert y.meta["mask_source"] == "detected" and iou(y.mask, field) >= 0.97


def test_detect_polarity():
    img = np.zeros((64, 64))
    img[16:48, 16:48] = np.linspace(1, 3, 32)[None, :]  # dense object bright, air plateau dark
    assert detect_polarity(img) == "dense_bright" and detect_polarity(-img) == "dense_dark"
    assert detect_polarity(np.random.default_rng(0).uniform(size=(64, 64))) is None


# --------------------------------------------------------------------------- PNG / NPY with P.txt
def test_png_and_npy_with_projection_matrix(tmp_path):
    cam = Camera.c_arm(sid=750, sdd=1100, width=W, height=H, pixel_spacing=0.8, lao=20, cran=10)
    L = sphere_line_integral(cam, centre=(0, 0, 0), radius=15)  # air around it
    lo, hi = 0.0, float(L.max())
    png = save_png(tmp_path / "drr.png", L, bits=16, window=(lo, hi))
    save_projection_matrix(tmp_path / "drr.P.txt", cam.P)
    x = read_xray(png, pixel_spacing=0.8)
    assert x.meta["geometry_source"] == "drr.P.txt" and x.camera.pixel_spacing == 0.8
    assert np.allclose(x.camera.P, cam.P, atol=1e-12 * np.abs(cam.P).max())
    assert x.polarity == "dense_bright"  # detected: air is the dark plateau
    step = (hi - lo) / 65535
    assert np.abs(x.line_integral * step - L).max() <= 0.5 * step + 1e-12
    y = read_xray(png, log_scale=step)
    assert np.abs(y.line_integral - L).max() <= 0.5 * step + 1e-12
    assert np.array_equal(x.raw, to_uint(L, 16, (lo, hi)))
    # a float NPY is the line integral itself
    npy = save_npy(tmp_path / "drr.npy", L)
    save_projection_matrix(tmp_path / "drr.P.txt", cam.P, overwrite=True)
    z = read_xray(npy)
    assert np.array_equal(z.line_integral, L) and z.I0 == 0.0
    # no geometry: a clear error unless geometry=False; C-arm arguments work instead
    lone = save_npy(tmp_path / "lone.npy", L)
    with pytest.raises(ValueError, match=r"lone\.P\.txt.*geometry=False"):
        read_xray(lone)
    assert read_xray(lone, geometry=False).camera is None
    with pytest.raises(ValueError, match="missing cran="):
        read_xray(lone, sid=750, sdd=1100, pixel_spacing=0.8, lao=20)
    c = read_xray(lone, sid=750, sdd=1100, pixel_spacing=0.8, lao=20, cran=10).camera
    assert np.allclose(c.P, cam.P, atol=1e-12 * np.abs(cam.P).max())


# --------------------------------------------------------------------------- writer checks
def test_non_carm_camera_refused(tmp_path):
    cam = Camera.c_arm(sid=800, sdd=1200, width=W, height=H, pixel_spacing=1.5, lao=30, cran=-15)
    L = sphere_line_integral(cam)
    th = math.radians(10.0)  # roll the detector about the principal point
    c = np.array([(W - 1) / 2, (H - 1) / 2])
    Rz = np.array([[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1.0]])
    T = np.array([[1, 0, c[0]], [0, 1, c[1]], [0, 0, 1.0]]) @ Rz @ np.array([[1, 0, -c[0]], [0, 1, -c[1]], [0, 0, 1.0]])
    rolled = Camera.from_projection_matrix(T @ cam.P, W, H, pixel_spacing=1.5)
    with pytest.raises(ValueError, match=r"not a C-arm.*rolled by 10 degrees"):
        write_dicom(tmp_path / "r.dcm", L, rolled)
    shifted = Camera.c_arm(sid=800, sdd=1200, width=W, height=H, pixel_spacing=1.5, lao=30, cran=-15,
                           principal_point=(50.0, 30.0))
    with pytest.raises(ValueError, match="principal point"):
        write_dicom(tmp_path / "s.dcm", L, shifted)
    with pytest.raises(ValueError, match="pixel_spacing"):
        write_dicom(tmp_path / "n.dcm", L, Camera.from_projection_matrix(cam.P, W, H))
    assert not any(tmp_path.iterdir())  # nothing written
    with pytest.raises(ValueError, match="MONOCHROME2"):
        write_dicom(tmp_path / "m.dcm", L, cam, modality="XA", photometric="MONOCHROME1")
    p = carm_parameters(cam)
    assert p["lao"] == pytest.approx(30) and p["cran"] == pytest.approx(-15) and p["sid"] == pytest.approx(800)


def test_isocenter_off_origin_kept_in_private_block(tmp_path):
    cam = Camera.c_arm(sid=800, sdd=1200, width=W, height=H, pixel_spacing=1.5, lao=30, cran=-15,
                       isocenter=(5.0, -3.0, 12.0))
    L = sphere_line_integral(cam)
    with pytest.warns(UserWarning, match="isocentre"):
        p = write_dicom(tmp_path / "iso.dcm", L, cam)
    x = read_xray(p)
    assert np.max(np.abs(x.camera.P - cam.P)) / np.max(np.abs(cam.P)) < 1e-12
    assert x.meta["tags_vs_private_P"] < 1e-9  # the tags with the stored isocentre agree
    # a C-arm's P fixes its isocentre only up to a slide along the beam axis: the writer stores the
    # axis point nearest to the world origin, and the standard tags hold the matching sid
    iso = np.asarray(x.meta["isocenter"])
    assert np.linalg.norm(np.cross(iso - cam.source, cam.view_direction)) < 1e-9 and abs(iso @ cam.view_direction) < 1e-9
    y = read_xray(p, isocenter=iso)  # the standard tags + the keyword
    assert y.meta["geometry_source"] == "standard tags"
    assert np.max(np.abs(y.camera.P - cam.P)) / np.max(np.abs(cam.P)) < 1e-6


def test_never_overwrite_and_shutter_written(tmp_path):
    cam = Camera.c_arm(sid=800, sdd=1200, width=W, height=H, pixel_spacing=1.5)
    L = sphere_line_integral(cam)
    mask = np.zeros((H, W), bool)
    mask[8:70, 12:90] = True
    p = write_dicom(tmp_path / "a.dcm", L, cam, mask=mask, modality="DX")
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_dicom(p, L * 2, cam)
    assert p.read_bytes() == before
    x = read_xray(p)
    assert np.array_equal(x.mask, mask) and x.meta["mask_source"].startswith("tags")
    write_dicom(p, L, cam, overwrite=True)
    assert read_xray(p).mask.all()
    rr, cc = np.mgrid[0:H, 0:W]
    circ = (rr - 40) ** 2 + (cc - 47) ** 2 <= 35**2
    q = write_dicom(tmp_path / "c.dcm", L, cam, mask=circ)
    assert pydicom.dcmread(q).ShutterShape == "CIRCULAR" and np.array_equal(read_xray(q).mask, circ)


def test_file_without_preamble(tmp_path):
    ds = xa_dataset(np.full((H, W), 500, np.uint16))
    p = tmp_path / "bare"
    ds.preamble = None
    del ds.file_meta
    pydicom.dcmwrite(p, ds, implicit_vr=True, little_endian=True)
    assert p.read_bytes()[128:132] != b"DICM"
    x = read_xray(p, shutter="none", I0=1000.0)
    assert np.allclose(x.line_integral, np.log(2.0)) and x.meta["lao"] == 30.0


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_xray(tmp_path / "nope.dcm")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(ValueError, match="junk.dcm"):
        read_xray(junk)
    cam = Camera.c_arm(sid=800, sdd=1200, width=W, height=H, pixel_spacing=1.5)
    with pytest.raises(ValueError, match="shape"):
        write_dicom(tmp_path / "x.dcm", np.zeros((H + 1, W)), cam)
    with pytest.raises(ValueError, match="NaN"):
        write_dicom(tmp_path / "x.dcm", np.full((H, W), np.nan), cam)
    with pytest.raises(ValueError, match="polarity"):
        read_xray(junk, polarity="bright")


# --------------------------------------------------------------------------- more tag paths
def test_modality_lut_sequence_log_is_scaled_back_to_linear(tmp_path):
    """XA/XRF: the Modality LUT of a LOG image maps back to values proportional to intensity (C.8.7.1)."""
    q = np.tile(np.arange(W, dtype=np.uint16) * 40, (H, 1))  # stored log-type values 0..3800
    lut_data = np.rint(60000 * np.exp((np.arange(4096) - 4095) / 1000.0)).astype(np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "OW", lut_data.astype("<u2").tobytes())  # LUT Data
    ds = xa_dataset(q, pir="LOG")
    ds.ModalityLUTSequence = [item]
    x = read_xray(save(ds, tmp_path / "lut.dcm"), shutter="none", I0=60000.0)
    assert x.meta["log_stored"] is False and x.meta["calibration"].startswith("Modality LUT")
    assert np.allclose(x.line_integral, -np.log(lut_data[q] / 60000.0), atol=1e-12)


def test_enhanced_functional_groups_and_bits_stored(tmp_path):
    frames = np.stack([np.full((H, W), 0xF000 | 500, np.uint16), np.full((H, W), 0xF000 | 250, np.uint16)])
    ds = xa_dataset(frames, primary=None, secondary=None, sid=None, sdd=None, ps=None, BitsStored=12, HighBit=11)
    geo = Dataset()
    geo.DistanceSourceToIsocenter, geo.DistanceSourceToDetector = 760.0, "1120"
    det = Dataset()
    det.ImagerPixelSpacing = ["0.6", "0.6"]
    shared = Dataset()
    shared.XRayGeometrySequence, shared.PixelMeasuresSequence = [geo], [det]
    ds.SharedFunctionalGroupsSequence = [shared]
    per = []
    for a, b in ((-30.0, 0.0), (40.0, 15.0)):
        pos = Dataset()
        pos.PositionerPrimaryAngle, pos.PositionerSecondaryAngle = str(a), str(b)
        it = Dataset()
        it.PositionerPositionSequence = [pos]
        per.append(it)
    ds.PerFrameFunctionalGroupsSequence = per
    x = read_xray(save(ds, tmp_path / "enh.dcm"), frame=1, shutter="none", I0=1000.0)
    assert np.all(x.raw == 250)  # masked to Bits Stored = 12
    assert np.allclose(x.line_integral, np.log(4.0))
    ref = Camera.c_arm(sid=760, sdd=1120, width=W, height=H, pixel_spacing=0.6, lao=40, cran=15)
    assert np.allclose(x.camera.P, ref.P, atol=1e-9 * np.abs(ref.P).max())


def test_positioner_type_disp_and_ignored_tags(tmp_path):
    q = np.full((H, W), 500, np.uint16)
    col = save(xa_dataset(q, modality="DX", PositionerType="COLUMN", PixelIntensityRelationshipSign=-1),
               tmp_path / "col.dcm")
    with pytest.raises(DicomTagError, match="COLUMN.*lao= and cran="):
        read_xray(col)
    assert read_xray(col, lao=0.0, cran=0.0, shutter="none", I0=0.0).camera is not None
    disp = save(xa_dataset(q, pir="DISP", DetectorPrimaryAngle="3.5", TableLongitudinalIncrement="2"),
                tmp_path / "disp.dcm")
    with pytest.warns(UserWarning) as rec:
        x = read_xray(disp, shutter="none", I0=1000.0)
    msgs = " ".join(str(r.message) for r in rec)
    assert "DISP" in msgs and "DetectorPrimaryAngle" in msgs
    assert x.meta["log_stored"] is True and x.meta["ignored"] == {"DetectorPrimaryAngle": 3.5}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_xray(disp, shutter="none", I0=1000.0, log_stored=True, geometry=False)  # no warning when decided
