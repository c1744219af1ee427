#!/usr/bin/env python
"""CT-derived tetrahedral pelvis against the CT's own DRR (issue 14): images, speed, registration.

Data: ../shared/data/pelvis-ct (TotalSegmentator example CT, 3 mm, labels hip_left 90,
hip_right 91, sacrum 92), or ``--data``; the script exits with a message when it is absent.

Models (all in LPS mm, from the same CT, so the true pose is the identity)
---------------------------------------------------------------------------
* **surface**: the three bones' surfaces from the label map
  (:func:`taichi_xray.ct.labels.labels_to_meshes`: marching cubes, 10 Taubin iterations, full
  resolution unless ``--faces``: its coarsening resamples the mask and shrinks the bones, by 13 %
  in volume at 2000 faces per bone), constant density: ICRU-44 cortical bone at its reference
  density (the constant-density model of the paper and of benchmarks/pelvis_experiment.py).
* **homogeneous**: the tet meshes below with one density per bone, the mean of the sampled
  constant densities weighted by tet volume (water and bone channels): a surface model with the
  bone's right average composition (interior faces carry no jump and are skipped: it renders as
  its boundary surface).
* **tet constant** / **tet linear**: each surface tetrahedralised by fTetWild
  (:func:`taichi_xray.objects.tetbuild.tetrahedralize`, ``max_volume=--max-volume`` mm³, envelope
  ``--epsilon`` × the bone's bounding-box diagonal (4e-3: about 1 mm, which also simplifies the
  fine marching-cubes surface), one thread; cached in ``--cache`` because fTetWild is slow and not
  deterministic) and filled from
  the *unmasked* CT with :meth:`TetMesh.sample_ct`: constant per tet (trilinear CT at the
  centroid) or linear per tet (at the vertices), HU conversion ``water_bone`` (water and ICRU-44
  cortical bone, ``hu_bone`` = 1725 HU at 65 keV).

Reference: the DRR of the CT **masked to the three bone labels**: a
:class:`~taichi_xray.objects.volume.Volume` whose HU outside labels 90/91/92 is set to -1000 (vacuum
under ``water_bone``), projected by Siddon (exact voxels) with the same HU conversion, in the same
:class:`~taichi_xray.pipeline.Pipeline` physics (80 kVp tungsten, CsI 0.6 mm energy-integrating
detector, line integral ``-ln(I/I0)``). This is the fair target for bone models: it holds exactly
the voxels the meshes model, with the densities the tet meshes sample. Remaining differences: the
smoothed marching-cubes surface against the voxel mask, the sampling (trilinear at points, which
near the surface also reads the soft tissue just outside the bone; the reference has vacuum
there), and the tets' piecewise constant/linear fields against 3 mm voxels.

The three bones are separate objects of one pipeline with ``overlap="allow"``: meshes of adjacent
labels touch at the sacro-iliac joints and the symphysis and overlap there by a fraction of a mm
(about 30 pixels of 128² per view), which the nesting check would otherwise refuse.

Image comparison (``--compare-size``², views LAO 45 / RAO 45, C-arm SID 800 / SDD 1200 mm, 480 mm
detector): Pearson correlation and relative error ``|model - ref|_2 / |ref|_2`` of the line
integral over the pixels where the model or the reference is non-zero (the bones' footprint),
and the ratio of the image totals. Speed per frame: one view at that size, ``render()`` (forward)
and ``render_torch`` forward + backward with respect to the vertices, median over ``--repeat``.

Registration (``--reg-size``², the same two views): the rigid pose of the three bones as one body
(rotation vector about the surface vertices' centroid, translation) fitted to a CT DRR
(``--targets bones,full``: "bones", the masked CT DRR: the models hold only bones, so this
target isolates the bone model's own error, geometry and density; "full", the DRR of the whole
CT: bones within soft tissue, femora, vertebra and table, everything the bone models lack, the
realistic case; the loss then weighs only the pixels whose rays cross the CT's box, eroded by
3 pixels, min-pooled and eroded by one more pixel per level (:func:`taichi_xray.fit.losses.pool_mask`),
as benchmarks/pelvis_experiment.py does: the box's cut borders are not anatomy) from starts
uniform in ±10 mm / ±5° per component (seeded, the same for
every variant). Adam on the 6 parameters through ``Pipeline.render_torch`` with vertices posed by
:func:`taichi_xray.pose.rigid_transform`, NGC (:func:`taichi_xray.fit.losses.ngc_loss`) averaged
over the views, coarse to fine on cameras with binned pixels
(:func:`taichi_xray.fit.register.downsample_camera`, targets average-pooled), each level's lr
decaying to a tenth. Landmarks: the 14 pelvis landmarks of :mod:`taichi_xray.fit.landmarks` on the
surface meshes' vertices; every variant is scored on the same physical points moved by its fitted
pose (identity = truth). Reported: landmark error (mean over the 14 points) per trial, the
systematic bias (the mean error vector over trials and landmarks, and the mean over landmarks of
the length of each landmark's mean error vector), and the time per registration.

Usage::

    python benchmarks/tet_experiment.py --force                          # everything, 10 trials
    python benchmarks/tet_experiment.py --trials 0 --out /tmp/t.md       # images and speed only
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch's OpenMP threads must not spin against Taichi's

import argparse  # noqa: E402
import ast  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "data", "pelvis-ct"))
BONES = {"hip_left": 90, "hip_right": 91, "sacrum": 92}
ANGLES = {"ap": 0.0, "lat": 90.0, "lao45": 45.0, "rao45": -45.0}
SCHEDULE = [(2, 80, 1.0), (1, 60, 0.3)]
VARIANTS = ("surface", "homogeneous", "tet_constant", "tet_linear")
LABEL = {"surface": "surface mesh, cortical bone (constant)", "homogeneous": "surface, mean CT density per bone",
         "tet_constant": "tet mesh, constant per tet (CT)", "tet_linear": "tet mesh, linear per tet (CT)",
         "volume": "CT volume masked to the bones (Siddon)"}


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DATA)
    p.add_argument("--faces", type=int, default=0,
                   help="coarsen each bone's surface to about this many faces (0: full resolution; coarsening "
                        "resamples the label mask and shrinks the bones, 13 %% in volume at 2000 faces)")
    p.add_argument("--max-volume", type=float, default=100.0, help="fTetWild target tet volume, mm^3")
    p.add_argument("--epsilon", type=float, default=4e-3,
                   help="fTetWild envelope, relative to each bone's bounding-box diagonal (4e-3: about 1 mm)")
    p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "taichi_xray", "tet_experiment"),
                   help="folder for the tetrahedralisations ('' = none)")
    p.add_argument("--views", default="lao45,rao45")
    p.add_argument("--compare-size", type=int, default=256)
    p.add_argument("--reg-size", type=int, default=128)
    p.add_argument("--repeat", type=int, default=5, help="timed renders per cell")
    p.add_argument("--trials", type=int, default=10, help="registrations per variant (0: none)")
    p.add_argument("--reg-variants", default=",".join(VARIANTS),
                   help="comma list of " + ", ".join(VARIANTS))
    p.add_argument("--targets", default="bones,full",
                   help="registration target DRRs, comma list: bones (CT masked to the bones), full (the whole CT)")
    p.add_argument("--no-mask", action="store_true", help="full target: no mask (the CT box's borders enter NGC)")
    p.add_argument("--schedule", default=None, help=f"(binning, iterations, lr) levels, default {SCHEDULE}")
    p.add_argument("--rot-deg", type=float, default=5.0)
    p.add_argument("--trans-mm", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=os.path.join(HERE, "results", "tet-experiment-cpu.md"))
    p.add_argument("--force", action="store_true")
    p.add_argument("--note", default="")
    return p.parse_args()


# ----------------------------------------------------------------------------------------- models
def tetrahedralised(args, name, surf):
    """fTetWild tets of one surface (vertices, tets), from the cache when present."""
    from taichi_xray.objects.tetbuild import tetrahedralize

    key = f"{name}_f{args.faces}_v{args.max_volume:g}_e{args.epsilon:g}.npz"
    path = os.path.join(args.cache, key) if args.cache else None
    if path and os.path.isfile(path):
        with np.load(path) as z:
            return z["vertices"], z["tets"], float(z["seconds"]), True
    t0 = time.perf_counter()
    tm = tetrahedralize(surf, max_volume=args.max_volume, epsilon=args.epsilon, threads=1, name=name)
    dt = time.perf_counter() - t0
    if path:
        os.makedirs(args.cache, exist_ok=True)
        np.savez(path, vertices=tm.vertices, tets=tm.tets, seconds=dt)
    return tm.vertices, tm.tets, dt, False


def build(args):
    import nibabel as nib

    from taichi_xray.ct.labels import labels_to_meshes
    from taichi_xray.objects import TetMesh, Volume
    from taichi_xray.physics.hu import get_hu_conversion

    vol = Volume.load(os.path.join(args.data, "ct.nii.gz"), name="ct")
    lab = np.rint(np.asarray(nib.load(os.path.join(args.data, "labels.nii.gz")).dataobj)).astype(np.int32)
    if lab.shape != vol.shape:
        sys.exit(f"labels {lab.shape} and CT {vol.shape} differ in shape")
    bone = np.isin(lab, list(BONES.values()))
    masked = Volume(np.where(bone, vol.values, -1000.0), vol.affine, name="bones")
    conv = get_hu_conversion("water_bone")
    tf = args.faces or None
    for _ in range(10):  # coarsening can give a non-manifold mesh: retry with 10 % more faces
        try:
            surf = labels_to_meshes(os.path.join(args.data, "labels.nii.gz"), labels=BONES, smooth_iterations=10,
                                    target_faces=tf)
            break
        except RuntimeError as exc:
            print(f"target_faces={tf}: {exc}; retrying", flush=True)
            if tf is None:
                raise
            tf = int(tf * 1.1)
    surf = [surf[k] for k in BONES]
    info = {}
    const, lin, homo = [], [], []
    for name, s in zip(BONES, surf):
        V, X, sec, cached = tetrahedralised(args, name, s)
        tm = TetMesh(V, X, None, conv.names, name)
        c = tm.sample_ct(vol, kind="constant", conversion=conv)
        li = tm.sample_ct(vol, kind="linear", conversion=conv)
        mean = (c.densities * c.volumes()[:, None]).sum(0) / c.volume()
        h = TetMesh(V, X, np.tile(mean, (len(X), 1)), conv.names, name, kind="constant")
        const.append(c)
        lin.append(li)
        homo.append(h)
        info[name] = dict(surface_faces=len(s.faces), vertices=len(V), tets=len(X), faces=tm.n_faces,
                          seconds=sec, cached=cached, mean=mean, volume=tm.volume(),
                          surface_volume=abs(s.check().volume),
                          mask_volume=float((lab == BONES[name]).sum() * np.prod(vol.spacing)))
    allv = np.concatenate([s.vertices for s in surf])
    return dict(vol=vol, masked=masked, conv=conv, surf=surf, models=dict(homogeneous=homo, tet_constant=const,
                tet_linear=lin), info=info, centre=allv.mean(0), allv=allv)


def cameras(args, S, size):
    from taichi_xray.camera import Camera

    views = [v.strip() for v in args.views.split(",") if v.strip()]
    for v in views:
        if v not in ANGLES:
            sys.exit(f"unknown view {v!r}; use {', '.join(ANGLES)}")
    return [Camera.c_arm(sid=800.0, sdd=1200.0, width=size, height=size, pixel_spacing=480.0 / size, lao=ANGLES[v],
                         isocenter=S["centre"]) for v in views]


def pipeline(S, variant, cams):
    import torch

    from taichi_xray.pipeline import Pipeline, VolumeObject
    from taichi_xray.physics import Detector, Spectrum

    kw = dict(spectrum=Spectrum.tungsten(80.0), detector=Detector("energy", ("CsI", 0.6)), output="line_integral",
              dtype=torch.float32, overlap="allow")
    names = list(BONES)
    if variant == "surface":
        return Pipeline(S["surf"], cams, materials=["cortical_bone"] * 3, names=names, **kw)
    if variant in ("volume", "volume_full"):
        v = S["masked"] if variant == "volume" else S["vol"]
        return Pipeline([], cams, materials=[], volumes=[VolumeObject(v, hu_conversion=S["conv"], method="siddon")],
                        **kw)
    return Pipeline(S["models"][variant], cams, materials=[None] * 3, names=names, **kw)


def base_vertices(S, variant):
    if variant == "surface":
        return [np.asarray(s.vertices, np.float64) for s in S["surf"]]
    return [np.asarray(t.vertices, np.float64) for t in S["models"][variant]]


# ----------------------------------------------------------------------------------------- images
def compare(args, S):
    cams = cameras(args, S, args.compare_size)
    ref = pipeline(S, "volume", cams).render().double().numpy()
    rows, images = [], {"volume": ref}
    fp = None
    for var in VARIANTS:
        img = pipeline(S, var, cams).render().double().numpy()
        images[var] = img
        r, rel, tot = [], [], []
        for a, b in zip(img, ref):
            m = (a > 0) | (b > 0)
            r.append(np.corrcoef(a[m], b[m])[0, 1])
            rel.append(np.linalg.norm(a[m] - b[m]) / np.linalg.norm(b[m]))
            tot.append(a.sum() / b.sum())
        fp = int(((img > 0) | (ref > 0)).sum())
        rows.append([LABEL[var], f"{np.mean(r):.4f}", f"{np.mean(rel):.3f}", f"{np.mean(tot):.3f}",
                     ", ".join(f"{x:.4f}" for x in r)])
        print(f"{var}: r {np.mean(r):.4f}, relative error {np.mean(rel):.3f}, totals {np.mean(tot):.3f}", flush=True)
    return rows, images, fp


def speed(args, S):
    import torch

    from taichi_xray.runtime import torch_device

    cam = cameras(args, S, args.compare_size)[:1]
    rows = []
    for var in ("surface", "tet_constant", "tet_linear", "volume"):
        pipe = pipeline(S, var, cam)
        fwd = _common.timed(lambda: pipe.render(), args.repeat, warmup=1)
        if var == "volume":
            pose = torch.zeros(6, dtype=torch.float64, requires_grad=True)

            def fb():
                pipe.render_torch([], volume_poses={"bones": pose}).sum().backward()
        else:
            vs = [torch.tensor(v, dtype=torch.float32, device=torch_device(), requires_grad=True)
                  for v in base_vertices(S, var)]

            def fb():
                pipe.render_torch(vs).sum().backward()
        bwd = _common.timed(fb, args.repeat, warmup=1)
        faces = len(pipe.faces)
        rows.append([LABEL[var], f"{faces}", f"{fwd['median_ms']:.0f}", f"{bwd['median_ms']:.0f}",
                     f"{fwd['first_ms'] / 1e3:.1f}"])
        print(f"speed {var}: {faces} faces, forward {fwd['median_ms']:.0f} ms, fwd+bwd {bwd['median_ms']:.0f} ms",
              flush=True)
    return rows


# ----------------------------------------------------------------------------------------- registration
def register_bones(levels, targets, base, p0, schedule, centre, masks=None):
    """Adam over the levels on p = (rotation vector deg (3), translation mm (3)); returns p (6,).
    masks: {factor: (V, h, w) weights of the gradient pixels} or None."""
    import torch

    from taichi_xray.fit.losses import ngc_loss
    from taichi_xray.pose import rigid_transform

    p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    c = torch.as_tensor(centre, dtype=torch.float64)
    vb = [torch.as_tensor(v, dtype=torch.float64) for v in base]
    for f, iters, lr in schedule:
        pipe, tgt = levels[int(f)], targets[int(f)]
        opt = torch.optim.Adam([p], lr=lr)
        decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1.0 / max(int(iters), 1)))
        for _ in range(int(iters)):
            opt.zero_grad()
            rv = torch.deg2rad(p[:3])
            vs = [rigid_transform(v, rv, p[3:], c).float() for v in vb]
            img = pipe.render_torch(vs).to(torch.float64)
            loss = ngc_loss(img, tgt, None if masks is None else masks[int(f)])
            loss.backward()
            opt.step()
            decay.step()
    return p.detach().numpy()


def registration(args, S, target_kind):
    import torch
    from scipy.spatial.transform import Rotation

    from taichi_xray.fit.landmarks import pelvis_landmarks
    from taichi_xray.fit.register import downsample_camera

    schedule = SCHEDULE if args.schedule is None else [tuple(x) for x in ast.literal_eval(args.schedule)]
    cams = cameras(args, S, args.reg_size)
    facs = sorted({int(s[0]) for s in schedule})
    ref = pipeline(S, "volume" if target_kind == "bones" else "volume_full", cams)
    with torch.no_grad():
        target = ref.render().double()
    targets = {f: target if f == 1 else torch.nn.functional.avg_pool2d(target[:, None], f)[:, 0] for f in facs}
    masks = None
    if target_kind == "full" and not args.no_mask:  # rays through the CT box, eroded 3 px: the box's cut borders are not anatomy
        from scipy.ndimage import binary_erosion

        from taichi_xray.fit.losses import pool_mask
        from taichi_xray.objects import Volume, VolumeProjector

        box = Volume(np.zeros(S["vol"].shape, np.float32), S["vol"].affine, name="box")
        chord = VolumeProjector(box, cams, hu_conversion="water_bone").numpy()[:, 0]
        full = torch.as_tensor(np.stack([binary_erosion(c > 1.0, iterations=3) for c in chord]), dtype=torch.float64)
        masks = {f: pool_mask(full, f, erode=1) for f in facs}
    lm = pelvis_landmarks(*[s.vertices for s in S["surf"]])
    L = S["allv"][lm.indices]
    c = S["centre"]
    rng = np.random.default_rng(args.seed)
    starts = [np.concatenate([rng.uniform(-args.rot_deg, args.rot_deg, 3), rng.uniform(-args.trans_mm, args.trans_mm, 3)])
              for _ in range(args.trials)]
    out = {}
    for var in [v.strip() for v in args.reg_variants.split(",") if v.strip()]:
        if var not in VARIANTS:
            sys.exit(f"unknown variant {var!r}; use {', '.join(VARIANTS)}")
        levels = {f: pipeline(S, var, [downsample_camera(cm, f) for cm in cams]) for f in facs}
        base = base_vertices(S, var)
        t0 = time.perf_counter()
        register_bones(levels, targets, base, np.zeros(6), [(f, 1, 0.0) for f in facs], c, masks)  # compile
        warm = time.perf_counter() - t0
        rows = []
        for k, p0 in enumerate(starts):
            tic = time.perf_counter()
            p = register_bones(levels, targets, base, p0, schedule, c, masks)
            dt = time.perf_counter() - tic
            R = Rotation.from_rotvec(np.deg2rad(p[:3])).as_matrix()
            R0 = Rotation.from_rotvec(np.deg2rad(p0[:3])).as_matrix()
            e = (L - c) @ R.T + c + p[3:] - L  # (14, 3) landmark error vectors
            e0 = (L - c) @ R0.T + c + p0[3:] - L
            rows.append(dict(e=e, le=float(np.linalg.norm(e, axis=1).mean()), le0=float(np.linalg.norm(e0, axis=1).mean()),
                             time=dt, p=p))
            print(f"[{target_kind} {var}] {k + 1}/{len(starts)}: landmark {rows[-1]['le0']:6.2f} -> {rows[-1]['le']:6.3f} mm, "
                  f"{dt:5.1f} s", flush=True)
        out[var] = dict(rows=rows, warm=warm)
    return out, schedule


# ----------------------------------------------------------------------------------------- report
def report(args, S, cmp_rows, fp, speed_rows, regs, schedule, info, total):
    lines = [
        "# Tetrahedral pelvis from the CT against the CT's own DRR (issue 14)",
        "",
        f"Generated by `{_common.command_line(__file__)}` (`benchmarks/tet_experiment.py`; its docstring "
        "describes every model, the reference and the registration).",
        "",
        "## Models",
        "",
    ]
    mrows = []
    for name, d in S["info"].items():
        mrows.append([name, d["surface_faces"], f"{100 * (d['surface_volume'] / d['mask_volume'] - 1):+.2f}",
                      d["vertices"], d["tets"], d["faces"],
                      f"{d['seconds']:.0f}" + (" (cached)" if d["cached"] else ""),
                      f"{100 * (d['volume'] / d['surface_volume'] - 1):+.2f}",
                      f"{d['mean'][0]:.3f} / {d['mean'][1]:.3f}"])
    lines += _common.md_table(["bone", "surface faces:", "surface vs label mask volume (%):", "tet vertices:", "tets:", "tet faces:", "fTetWild s:",
                               "tet vs surface volume (%):", "mean density water / bone:"], mrows)
    lines += ["", f"fTetWild `max_volume={args.max_volume:g}` mm³, `epsilon={args.epsilon:g}`, one thread; densities from the CT with the "
              "`water_bone` HU conversion (relative densities of water and ICRU-44 cortical bone).", ""]
    lines += [f"## Images against the masked CT DRR ({args.compare_size}², views {args.views})", "",
              "Line integral, 80 kVp, CsI; statistics over the pixels where the model or the reference is non-zero "
              f"({fp} pixels over the views), mean over the views.", ""]
    lines += _common.md_table(["model", "correlation:", "relative error:", "total / reference total:",
                               "correlation per view"], cmp_rows)
    lines += ["", f"## Speed per frame ({args.compare_size}², one view; median of {args.repeat})", ""]
    lines += _common.md_table(["model", "faces rendered:", "forward (ms):", "forward + backward (ms):",
                               "first call incl. compile (s):"], speed_rows)
    for target_kind, reg in regs.items():
        lines += ["", f"## Registration to the {'masked (bones only)' if target_kind == 'bones' else 'full'} CT DRR "
                  f"({args.reg_size}², views {args.views})", "",
                  ("Loss weighted by the pixels whose rays cross the CT's box, eroded 3 px (the box's cut "
                   "borders are not anatomy). " if target_kind == "full" and not args.no_mask else "") +
                  f"{len(next(iter(reg.values()))['rows'])} seeded starts (seed {args.seed}) uniform in "
                  f"±{args.trans_mm:g} mm / ±{args.rot_deg:g}° per component, the same for every model; NGC, Adam, "
                  f"schedule (binning, iterations, lr deg|mm decaying to lr/10) {schedule}. Landmark error: mean "
                  "over the 14 pelvis landmarks of |T_fit(x) - x| (truth: identity). Bias: the mean error vector "
                  "over trials and landmarks (LPS mm) and the mean over landmarks of |mean error vector over "
                  "trials| (systematic part, includes rotation).", ""]
        rrows = []
        for var, d in reg.items():
            rows = d["rows"]
            le = np.array([r["le"] for r in rows])
            le0 = np.array([r["le0"] for r in rows])
            E = np.stack([r["e"] for r in rows])  # (n, 14, 3)
            bias = E.mean(axis=(0, 1))
            sysb = np.linalg.norm(E.mean(0), axis=1).mean()
            t = np.array([r["time"] for r in rows])
            rrows.append([LABEL[var], f"{np.median(le0):.2f}", f"{np.median(le):.3f}", f"{le.mean():.3f}",
                          f"{le.max():.3f}", "(" + ", ".join(f"{b:+.2f}" for b in bias) + ")", f"{sysb:.3f}",
                          f"{np.median(t):.1f}", f"{d['warm']:.1f}"])
        lines += _common.md_table(["model", "landmark initial median (mm):", "final median (mm):", "final mean (mm):",
                                   "final max (mm):", "bias vector (mm)", "systematic (mm):",
                                   "time / registration (s):", "compile (s):"], rrows)
    if args.note:
        lines += ["", args.note]
    lines += ["", f"Total wall time {total / 60:.1f} min.", "", *_common.machine_markdown(info)]
    return "\n".join(lines) + "\n"


def main():
    args = parse()
    if not all(os.path.isfile(os.path.join(args.data, f)) for f in ("ct.nii.gz", "labels.nii.gz")):
        sys.exit(f"pelvis CT not found: {args.data} must hold ct.nii.gz and labels.nii.gz "
                 "(see ../shared/data/pelvis-ct/README.md). Nothing was run.")
    _common.check_out(args.out, force=args.force)
    _common.bootstrap()
    import torch

    torch.set_num_threads(args.threads)
    info = _common.machine_info({"note": "2 cores shared with other sessions (load average below)"})
    t_all = time.perf_counter()
    S = build(args)
    for name, d in S["info"].items():
        print(f"{name}: {d['surface_faces']} surface faces, {d['tets']} tets, {d['faces']} faces, "
              f"fTetWild {d['seconds']:.0f} s{' (cached)' if d['cached'] else ''}", flush=True)
    cmp_rows, _, fp = compare(args, S)
    speed_rows = speed(args, S) if args.repeat > 0 else []
    regs, schedule = {}, None
    for kind in ([t.strip() for t in args.targets.split(",") if t.strip()] if args.trials > 0 else []):
        if kind not in ("bones", "full"):
            sys.exit(f"unknown target {kind!r}: use bones, full")
        regs[kind], schedule = registration(args, S, kind)
    text = report(args, S, cmp_rows, fp, speed_rows, regs, schedule, info, time.perf_counter() - t_all)
    _common.write_out(args.out, text)
    print(text)
    print("written:", args.out)


if __name__ == "__main__":
    main()
