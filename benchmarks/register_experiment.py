#!/usr/bin/env python
"""Registration on real-looking X-rays (issue 10, items 5 and 6): does ``taichi-xray register``
recover a known transform from DICOM targets, clean and degraded as fluoroscopy is?

Scene: the built-in pelvis phantom (scenes/pelvis.toml). The bones (sacrum, hip bones, femora and
their cores: ``--objects``) move as one body by a seeded random transform (+-10 mm per translation
component, +-5 deg per rotate_deg angle, about their centroid); the body's soft tissue, bladder,
gas and lumbar vertebrae stay. Targets are rendered from the moved scene,
written as DICOM with :func:`taichi_xray.io.write_dicom` and registered from the scene as given
by :func:`taichi_xray.fit.scene_register.register_scene` (what the CLI calls), reading them back
with :func:`taichi_xray.io.read_xray` (camera from the tags, masks found automatically).

Blocks (``--blocks``):

* ``clean`` (issue 10 (a)): DICOM encodings cycled per trial: XA MONOCHROME2 LOG (with the
  writer's private calibration), XA MONOCHROME2 LIN, DX MONOCHROME1 LOG, DX MONOCHROME1 LIN,
  DX MONOCHROME2 LOG -- all but the first with the private tags removed (standard tags only:
  Rescale, Pixel Intensity Relationship and Sign), and the DX LOG ones also without the Sign
  tag (polarity detected from the image); one view (AP) and two views (AP + LAO 60).
* ``degraded`` (issue 10 (b)): each view degraded by :func:`taichi_xray.fit.degrade.degrade`
  (scatter SPR uniform in [0.5, 1], Poisson noise log-uniform in [1e3, 1e4] photons per pixel,
  1 px blur, a rectangular collimator leaving 75 % of the field rotated by up to 20 deg, a dense
  wire), written as DICOM with the encodings cycled; masks from the reader's shutter detection.
* ``ablation``: the degraded single-view targets registered with other losses / masks (the
  measurements behind the choice of the default), in memory (no DICOM round trip).
* ``ct`` (when ../shared/data/pelvis-ct exists): hip_left, hip_right and sacrum meshes from the
  CT's labels as the moving objects of a bones-only scene; target = the CT volume's DRR (real
  anatomy, everything the meshes lack), degraded; the truth is the identity and the registration
  starts from a seeded offset (``--init``-style), 1 view (AP) and 2 views (RAO 45 / LAO 45).
* ``ct-ablation``: the single-view CT case with several losses (same targets and starts).

Errors per trial: translation error ``|t_est - t_true|`` (the centroid's displacement, mm),
rotation error (angle of ``R_est R_true^T``, deg), TRE = mean distance between the moving
vertices under the estimated and the true transform (mm), success = TRE < 5 mm; time = the
registration call (rendering and optimisation, reading excluded).

Usage::

    python benchmarks/register_experiment.py                       # full run (long: see --help)
    python benchmarks/register_experiment.py --quick               # 1 trial per cell, 128 px
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import _common  # noqa: E402

IMPORTS = _common.bootstrap()
import torch  # noqa: E402

DATA = os.path.abspath(os.path.join(ROOT, "..", "shared", "data", "pelvis-ct"))
# the sacrum and every object whose name ends in _L or _R: the hip bones and femora of the pelvis phantom
# (hip_L/femur_L now, ilium_L/acetabulum_L/pubis_L/femur_L before its rebuild); cores follow their shells
BONES = "sacrum,*_L,*_R"
ENCODINGS = [  # (label, modality, photometric, log_stored, keep_private, keep_sign)
    ("XA M2 LOG private", "XA", "MONOCHROME2", True, True, True),
    ("XA M2 LIN tags", "XA", "MONOCHROME2", False, False, True),
    ("DX M1 LOG tags, polarity detected", "DX", "MONOCHROME1", True, False, False),
    ("DX M1 LIN tags", "DX", "MONOCHROME1", False, False, True),
    ("DX M2 LOG tags, polarity detected", "DX", "MONOCHROME2", True, False, False),
]
ABLATION = {  # name -> (loss, use_mask, mask_margin_px, schedule or None = the default)
    "ngc, no mask": ("ngc", False, 0, None),
    "ngc, mask": ("ngc", True, 2, None),
    "ngc + blur 1 px + outlier test, mask": ("blur_outlier", True, 2, None),
    "ngc + blur 1 px + outlier test, no mask": ("blur_outlier", False, 0, None),
    "ngc + blur 1 px, no outlier test, mask": ("blur_only", True, 2, None),
    "robust_ngc (outlier test, no blur), mask": ("robust_ngc", True, 2, None),
    "patch_ngc, mask": ("patch_ngc", True, 2, None),
    "robust_ngc (outlier test, no blur), no mask": ("robust_ngc", False, 0, None),
    "patch_ngc, no mask": ("patch_ngc", False, 0, None),
    "patch_ngc, mask, schedule 2:60:1,1:40:0.3": ("patch_ngc", True, 2, "2:60:1,1:40:0.3"),
    "patch_ngc, mask, schedule 4:60:2,2:60:1 (no full-size level)": ("patch_ngc", True, 2, "4:60:2,2:60:1"),
}


CT_ABLATION = {"ngc": "ngc", "patch_ngc": "patch_ngc", "robust_ngc (outlier test)": "robust_ngc",
               "ngc + blur 1 px": "blur_only"}


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scene", default=os.path.join(ROOT, "scenes", "pelvis.toml"))
    p.add_argument("--objects", default=BONES, help="moving objects (names / patterns)")
    p.add_argument("--blocks", default="clean,degraded,ablation,ct,ct-ablation")
    p.add_argument("--trials", type=int, default=10, help="clean: trials per (encoding, views) cell")
    p.add_argument("--degraded-trials", type=int, default=20, help="degraded / ct: trials per view set")
    p.add_argument("--ablation-trials", type=int, default=10)
    p.add_argument("--ablation-configs", default=None,
                   help="comma list of ablation rows by number (1-based, see ABLATION; default all)")
    p.add_argument("--wire-peak", type=float, default=1.0,
                   help="peak line integral of the wire in the degraded targets (default 1.0)")
    p.add_argument("--size", type=int, default=256, help="detector pixels (square)")
    p.add_argument("--views", default="0:0;0:0,60:0", help="view sets 'lao:cran,...' separated by ';'")
    p.add_argument("--loss", default=None, help="loss (default: register_scene's)")
    p.add_argument("--schedule", default=None, help="FACTOR:ITER:LR,... (default: register_scene's)")
    p.add_argument("--max-trans", type=float, default=10.0)
    p.add_argument("--max-rot", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--quick", action="store_true", help="1 trial per cell, 2 degraded, 1 per ablation row, 128 px")
    p.add_argument("--data", default=DATA)
    p.add_argument("--out", default=os.path.join(HERE, "results", "register-experiment-cpu.md"))
    p.add_argument("--force", action="store_true")
    return p.parse_args()


# ----------------------------------------------------------------------------- set-up
def parse_views(text):
    sets = []
    for vs in text.split(";"):
        sets.append([tuple(float(x) for x in v.split(":")) for v in vs.split(",") if v.strip()])
    return sets


def random_transform(rng, max_trans, max_rot):
    return rng.uniform(-max_trans, max_trans, 3), rng.uniform(-max_rot, max_rot, 3)


def errors(reg, R_true, t_true):
    from taichi_xray.fit.metrics import rotation_error_deg

    R = reg.transform[:3, :3]
    T_true = np.eye(4)
    T_true[:3, :3] = R_true
    T_true[:3, 3] = reg.centre_mm + t_true - R_true @ reg.centre_mm
    v = np.concatenate([np.asarray(reg.scene.objects[i].mesh.vertices) for i in reg.moving])
    pe = v @ reg.transform[:3, :3].T + reg.transform[:3, 3]
    pt = v @ T_true[:3, :3].T + T_true[:3, 3]
    return dict(trans=float(np.linalg.norm(reg.translation_mm - t_true)), rot=rotation_error_deg(R, R_true),
                tre=float(np.linalg.norm(pe - pt, axis=1).mean()), time=float(reg.result.time_s),
                iters=int(reg.result.n_iterations), loss=float(reg.result.loss),
                flipped=sum(bool(t.meta.get("polarity_flipped")) for t in reg.targets))


def init_errors(reg_like_centre, verts, R_true, t_true):
    """TRE of the starting pose (identity) against the truth."""
    pt = (verts - reg_like_centre) @ R_true.T + reg_like_centre + t_true
    return float(np.linalg.norm(pt - verts, axis=1).mean())


def write_target_dicom(path, L, cam, enc, mask=None):
    import pydicom

    from taichi_xray.io import write_dicom

    label, modality, phot, log_stored, keep_private, keep_sign = enc
    import warnings

    with warnings.catch_warnings():  # the isocentre note of write_dicom: read_xray gets the scene's isocentre
        warnings.simplefilter("ignore", UserWarning)
        write_dicom(path, L, cam, kind="line_integral", log_stored=log_stored, photometric=phot, modality=modality,
                    mask=mask, overwrite=True)
    if not (keep_private and keep_sign):
        ds = pydicom.dcmread(path)
        if not keep_private:
            ds.remove_private_tags()
        if not keep_sign and "PixelIntensityRelationshipSign" in ds:
            del ds.PixelIntensityRelationshipSign
        ds.save_as(path)
    return path


class Setup:
    def __init__(self, args):
        from taichi_xray.fit.scene_register import select_objects
        from taichi_xray.scene import load_scene

        self.args = args
        self.scene = load_scene(args.scene).with_overrides(size=(args.size, args.size))
        self.moving = select_objects(self.scene, args.objects)
        self.verts = [np.asarray(m.vertices, np.float64) for m in self.scene.meshes]
        self.centre = np.concatenate([self.verts[i] for i in self.moving]).mean(0)
        self.renderers = {}

    def cameras(self, views):
        return [self.scene.camera_spec.build(lao=a, cran=c, size=(self.args.size, self.args.size)) for a, c in views]

    def render_true(self, views, R_true, t_true):
        from scipy.spatial.transform import Rotation

        from taichi_xray.fit.register import render_posed
        from taichi_xray.fit.scene_register import _renderer

        key = tuple(views)
        if key not in self.renderers:
            self.renderers[key] = _renderer(self.scene, self.cameras(views))
        rv = np.rad2deg(Rotation.from_matrix(R_true).as_rotvec())
        img = render_posed(self.renderers[key], self.verts, rv, t_true, self.centre, moving=self.moving)
        return img.to(torch.float64).numpy()


WIRE_PEAK = [1.0]


def degrade_params(rng):
    return dict(spr=float(rng.uniform(0.5, 1.0)), photons=float(10 ** rng.uniform(3, 4)), blur_px=1.0,
                field_fraction=0.75, wire=True, wire_peak=WIRE_PEAK[0], seed=int(rng.integers(1 << 30)))


# ----------------------------------------------------------------------------- blocks
def run_dicom_block(S, name, views, n, rng, degraded, tmp, reg_kw):
    from taichi_xray.fit.degrade import degrade
    from taichi_xray.fit.scene_register import matrix_from_euler, register_scene

    rows = []
    for k in range(n):
        t_true, e_true = random_transform(rng, S.args.max_trans, S.args.max_rot)
        R_true = matrix_from_euler(e_true)
        enc = ENCODINGS[k % len(ENCODINGS)]
        clean = S.render_true(views, R_true, t_true)
        cams = S.cameras(views)
        paths, dparams = [], []
        for v, (L, cam) in enumerate(zip(clean, cams)):
            if degraded:
                dp = degrade_params(rng)
                L = degrade(L, **dp).line_integral
                dparams.append(dp)
            paths.append(write_target_dicom(os.path.join(tmp, f"t{k}_{v}.dcm"), L, cam, enc))
        reg = register_scene(S.scene, paths, S.moving, progress=False, **reg_kw)
        e = errors(reg, R_true, t_true)
        e.update(enc=enc[0], tre0=init_errors(S.centre, np.concatenate([S.verts[i] for i in S.moving]),
                                              R_true, t_true),
                 spr=np.mean([d["spr"] for d in dparams]) if dparams else None,
                 photons=np.mean([d["photons"] for d in dparams]) if dparams else None,
                 mask=np.mean([t.mask.mean() if t.mask is not None else 1.0 for t in reg.targets]))
        rows.append(e)
        print(f"[{name}] {k + 1}/{n} {enc[0]:36s} TRE {e['tre0']:5.1f} -> {e['tre']:6.2f} mm, trans "
              f"{e['trans']:6.2f} mm, rot {e['rot']:5.2f} deg, {e['time']:5.1f} s, {e['iters']} it, "
              f"mask {e['mask']:.2f}{', polarity flipped' if e['flipped'] else ''}", flush=True)
    return rows


def ablation_losses():
    from taichi_xray.fit import losses as L

    def blur_only(a, b, m):
        return L.robust_ngc_loss(a, b, mask=m, sigma=1.0, outlier=None)

    def blur_outlier(a, b, m):
        return L.robust_ngc_loss(a, b, mask=m, sigma=1.0, outlier=1.5)

    return {"blur_only": blur_only, "blur_outlier": blur_outlier}


def run_ablation(S, views, n, rng, tmp, reg_kw):
    from taichi_xray.fit.degrade import degrade
    from taichi_xray.fit.scene_register import Target, collimator_mask, matrix_from_euler, register_scene

    extra = ablation_losses()
    cases = []
    for k in range(n):
        t_true, e_true = random_transform(rng, S.args.max_trans, S.args.max_rot)
        R_true = matrix_from_euler(e_true)
        clean = S.render_true(views, R_true, t_true)
        tg = []
        for v, (L, cam) in enumerate(zip(clean, S.cameras(views))):
            d = degrade(L, **degrade_params(rng))
            tg.append((d.line_integral, collimator_mask(d.line_integral), cam))
        cases.append((R_true, t_true, tg))
    out = {}
    chosen = list(ABLATION.items())
    if S.args.ablation_configs:
        chosen = [chosen[int(i) - 1] for i in S.args.ablation_configs.split(",")]
    for name, (loss, use_mask, margin, sched) in chosen:
        rows = []
        for R_true, t_true, tg in cases:
            targets = [Target(L.copy(), m if use_mask else None, cam, "<degraded>") for L, m, cam in tg]
            kw = dict(reg_kw)
            kw["loss"] = extra.get(loss, loss)
            if sched is not None:
                kw["schedule"] = sched
            reg = register_scene(S.scene, targets, S.moving, progress=False, mask_margin_px=margin, **kw)
            rows.append(errors(reg, R_true, t_true))
        out[name] = rows
        s = summarize(rows)
        print(f"[ablation] {name:45s} TRE median {s['tre_med']:.2f} mm, <5 mm {s['succ']:.0f} %, "
              f"trans median {s['trans_med']:.2f} mm, {s['time_mean']:.1f} s", flush=True)
    return out


def build_ct(args, tmp):
    """A bones-only scene of the CT meshes (STL files in tmp) and the CT volume."""
    from taichi_xray.ct import CTVolume, labels_to_meshes
    from taichi_xray.scene import load_scene

    ms = labels_to_meshes(os.path.join(args.data, "labels.nii.gz"),
                          labels={"hip_left": 90, "hip_right": 91, "sacrum": 92}, smooth_iterations=10)
    import tomli_w

    allv = np.concatenate([ms[k].vertices for k in ms])
    iso = [float(x) for x in allv.mean(0)]
    d = {"camera": {"sid": 800.0, "sdd": 1200.0, "detector": [args.size, args.size],
                    "pixel_spacing": 480.0 / args.size, "isocenter": iso},
         "spectrum": {"kvp": 80, "filtration": {"Al": 2.5}},
         "detector": {"kind": "energy", "scintillator": {"material": "CsI", "thickness_mm": 0.6}},
         "object": []}
    for k in ("hip_left", "hip_right", "sacrum"):
        ms[k].save(os.path.join(tmp, f"{k}.stl"), overwrite=True, binary=True)
        d["object"].append({"name": k, "mesh": f"{k}.stl", "material": "cortical_bone"})
    with open(os.path.join(tmp, "ct.toml"), "wb") as f:
        tomli_w.dump(d, f)
    scene = load_scene(os.path.join(tmp, "ct.toml"))
    ct = CTVolume.from_nifti(os.path.join(args.data, "ct.nii.gz"))
    return scene, ct


def run_ct_block(args, scene, ct, name, views, n, rng, reg_kw):
    from scipy.ndimage import binary_erosion

    from taichi_xray.ct import CTVolume
    from taichi_xray.fit.degrade import degrade
    from taichi_xray.fit.scene_register import Target, collimator_mask, matrix_from_euler, register_scene
    from taichi_xray.physics import line_integral

    cams = [scene.camera_spec.build(lao=a, cran=c) for a, c in views]
    drr = [line_integral(ct.project(c), [-1, -1], ["water", "cortical_bone"], scene.spectrum, scene.detector)
           .astype(np.float64) for c in cams]
    box = CTVolume(np.zeros(ct.shape, np.float32), ct.affine, space="LPS")
    inside = [binary_erosion(box.project(c)[0] > 1.0, iterations=3) for c in cams]
    verts = np.concatenate([np.asarray(m.vertices) for m in scene.meshes])
    centre = verts.mean(0)
    rows = []
    for k in range(n):
        t0, e0 = random_transform(rng, args.max_trans, args.max_rot)   # the starting offset; truth = identity
        targets = []
        for L, cam, box_m in zip(drr, cams, inside):
            d = degrade(L, **degrade_params(rng))
            targets.append(Target(d.line_integral, collimator_mask(d.line_integral) & box_m, cam, "<CT DRR>"))
        reg = register_scene(scene, targets, "*", init=np.r_[t0, e0], progress=False, **reg_kw)
        e = errors(reg, np.eye(3), np.zeros(3))
        R0 = matrix_from_euler(e0)
        e["tre0"] = float(np.linalg.norm((verts - centre) @ R0.T + centre + t0 - verts, axis=1).mean())
        rows.append(e)
        print(f"[{name}] {k + 1}/{n} TRE {e['tre0']:5.1f} -> {e['tre']:6.2f} mm, trans {e['trans']:6.2f} mm, "
              f"rot {e['rot']:5.2f} deg, {e['time']:5.1f} s", flush=True)
    return rows


# ----------------------------------------------------------------------------- report
def summarize(rows):
    a = lambda k: np.array([r[k] for r in rows], dtype=np.float64)  # noqa: E731
    tr, ro, tre, t = a("trans"), a("rot"), a("tre"), a("time")
    pct = lambda x: "/".join(f"{np.percentile(x, q):.2f}" for q in (10, 50, 90))  # noqa: E731
    return dict(n=len(rows), trans_med=float(np.median(tr)), rot_med=float(np.median(ro)),
                tre_med=float(np.median(tre)), succ=100.0 * float(np.mean(tre < 5.0)),
                time_mean=float(t.mean()),
                row=[len(rows), f"{np.median(tr):.2f}", f"{tr.mean():.2f}", pct(tr), f"{np.median(ro):.2f}",
                     f"{ro.mean():.2f}", pct(ro), f"{np.median(tre):.2f}", f"{tre.mean():.2f}", pct(tre),
                     f"{100 * np.mean(tre < 5.0):.0f} %", f"{t.mean():.1f} ± {t.std():.1f}"])


HEADER = ["block", "views", "trials:", "trans median (mm):", "trans mean:", "trans p10/50/90:", "rot median (deg):",
          "rot mean:", "rot p10/50/90:", "TRE median (mm):", "TRE mean:", "TRE p10/50/90:", "TRE < 5 mm:",
          "s / registration:"]


def main():
    args = parse()
    if args.quick:
        args.trials, args.degraded_trials, args.ablation_trials = 1, 2, 1
        if args.size == 256:
            args.size = 128
    _common.check_out(args.out, force=args.force)
    from taichi_xray.runtime import ensure_init

    ensure_init()
    torch.set_num_threads(1)
    info = _common.machine_info()
    blocks = [b.strip() for b in args.blocks.split(",") if b.strip()]
    view_sets = parse_views(args.views)
    reg_kw = {}
    if args.loss:
        reg_kw["loss"] = args.loss
    if args.schedule:
        reg_kw["schedule"] = args.schedule
    WIRE_PEAK[0] = float(args.wire_peak)
    S = Setup(args)
    print(f"scene {args.scene} at {args.size}x{args.size}; moving: {', '.join(S.scene.names[i] for i in S.moving)}",
          flush=True)
    rng = np.random.default_rng(args.seed)
    t_all = time.perf_counter()
    table, enc_rows, ablation, ct_ablation = [], [], None, None
    with tempfile.TemporaryDirectory() as tmp:
        for views in view_sets:
            vname = " + ".join(f"LAO {a:g}" if c == 0 else f"LAO {a:g} CRAN {c:g}" for a, c in views)
            if "clean" in blocks:
                rows = run_dicom_block(S, f"clean {vname}", views, args.trials * len(ENCODINGS), rng, False, tmp, reg_kw)
                table.append(["(a) clean DICOM, all encodings", vname] + summarize(rows)["row"])
                for enc in ENCODINGS:
                    sub = [r for r in rows if r["enc"] == enc[0]]
                    if sub:
                        enc_rows.append([enc[0], vname] + summarize(sub)["row"])
            if "degraded" in blocks:
                rows = run_dicom_block(S, f"degraded {vname}", views, args.degraded_trials, rng, True, tmp, reg_kw)
                table.append(["(b) degraded DICOM, masks detected", vname] + summarize(rows)["row"])
        if "ablation" in blocks:
            ablation = run_ablation(S, view_sets[0], args.ablation_trials, rng, tmp, reg_kw)
        if "ct" in blocks:
            if os.path.isfile(os.path.join(args.data, "ct.nii.gz")):
                scene_ct, ct = build_ct(args, tmp)
                for views in ([(0.0, 0.0)], [(-45.0, 0.0), (45.0, 0.0)]):
                    vname = " + ".join(f"LAO {a:g}" for a, _ in views)
                    rows = run_ct_block(args, scene_ct, ct, f"ct {vname}", views, args.degraded_trials, rng, reg_kw)
                    table.append(["CT bones vs degraded CT DRR", vname] + summarize(rows)["row"])
            else:
                print(f"CT data not found at {args.data}: ct block skipped", flush=True)
        if "ct-ablation" in blocks and os.path.isfile(os.path.join(args.data, "ct.nii.gz")):
            if "ct" not in blocks:
                scene_ct, ct = build_ct(args, tmp)
            extra = ablation_losses()
            seed = int(rng.integers(1 << 30))
            ct_ablation = {}
            for name, loss in CT_ABLATION.items():
                kw = dict(reg_kw)
                kw["loss"] = extra.get(loss, loss)
                rows = run_ct_block(args, scene_ct, ct, f"ct-ablation {name}", [(0.0, 0.0)], args.ablation_trials,
                                    np.random.default_rng(seed), kw)
                ct_ablation[name] = rows
    total = time.perf_counter() - t_all
    write_report(args, info, S, table, enc_rows, ablation, ct_ablation, total)


def write_report(args, info, S, table, enc_rows, ablation, ct_ablation, total):
    from taichi_xray.fit.scene_register import DEFAULT_LOSS, default_schedule

    sched = args.schedule or str(default_schedule(args.size, args.size))
    lines = ["# Registration on real-looking X-rays (issue 10): `taichi-xray register` on DICOM targets", "",
             f"Command: `{_common.command_line(__file__)}`; total {total / 60:.1f} min.", "",
             f"Scene `{os.path.relpath(args.scene, ROOT)}` at {args.size}x{args.size} px; moving objects "
             f"({', '.join(S.scene.names[i] for i in S.moving)}) as one body; true transforms uniform in "
             f"±{args.max_trans:g} mm per translation component and ±{args.max_rot:g}° per rotate_deg angle about "
             f"their centroid; registration starts from the scene as given. Loss `{args.loss or DEFAULT_LOSS}`, "
             f"schedule {sched} (factor, iterations, Adam lr), seed {args.seed}.", "",
             "Errors: translation = |t_est - t_true| (centroid, mm); rotation = angle of R_est R_trueᵀ (deg); "
             "TRE = mean distance of the moving vertices between the estimated and true transforms (mm); "
             "time = the registration call (rendering + optimisation; DICOM reading excluded) on this machine.", ""]
    lines += _common.md_table(HEADER, table) + [""]
    if enc_rows:
        lines += ["Clean targets per DICOM encoding:", ""] + _common.md_table(["encoding"] + HEADER[1:], enc_rows) + [""]
    if ablation:
        lines += ["Ablation on degraded single-view targets (same targets for every row; masks from "
                  "`collimator_mask`, in memory):", ""]
        rows = [[name] + summarize(r)["row"][:1] + summarize(r)["row"][1:] for name, r in ablation.items()]
        lines += _common.md_table(["loss / mask"] + HEADER[2:], rows) + [""]
    if ct_ablation:
        lines += ["Ablation on the CT case, one view (AP), degraded CT DRR (same targets and starts for every row):",
                  ""]
        rows = [[name] + summarize(r)["row"] for name, r in ct_ablation.items()]
        lines += _common.md_table(["loss"] + HEADER[2:], rows) + [""]
    lines += _common.machine_markdown(info)
    _common.write_out(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print("written:", args.out)


if __name__ == "__main__":
    main()
