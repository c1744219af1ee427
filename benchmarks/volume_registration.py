#!/usr/bin/env python
"""Registration of a CT volume to its own DRRs (issue 11): the pose of the real pelvis CT.

Data: ../shared/data/pelvis-ct/ct.nii.gz (TotalSegmentator example CT, 122 x 101 x 112 voxels,
3 mm), or ``--data``; the script exits with a message when it is absent (nothing is run).

Setup
-----
* Scene: a :class:`~taichi_xray.pipeline.Pipeline` holding only the CT as a
  ``VolumeObject`` (default HU conversion ``air_water_bone``; ``--method siddon`` (default) or
  ``trilinear``), polychromatic 80 kVp tungsten spectrum, energy-integrating CsI detector
  (0.6 mm), output the line integral ``-ln(I/I0)``, float32.
* Views: C-arm, SID 800 mm, SDD 1200 mm, detector 480 mm square at ``--size`` pixels, isocentre
  at the CT's centre; ``--views lao45,rao45`` (default, two views) or one view (``--views ap``).
* Targets: the renders at the true pose (the identity: the CT where its affine puts it).
* Starts: rotation vector components uniform in +-5 deg and translation components uniform in
  +-10 mm (``--rot-deg``, ``--trans-mm``), seeded (``--seed``).
* Optimisation: the 6 pose parameters (rotation vector in degrees about the CT's centre,
  translation in mm) passed to ``Pipeline.render_torch(volume_poses={"ct": (rotvec rad, t mm)})``;
  Adam, coarse-to-fine over cameras with binned pixels
  (:func:`taichi_xray.fit.register.downsample_camera`; the target average-pooled to match), one
  Adam per level with its learning rate (deg or mm per step) decaying exponentially to a tenth
  over the level; loss NGC (Penney et al. 1998; ``--loss ngc``, default) or MSE of the line
  integrals, averaged over the views. No mask: the whole volume moves, its cut borders included.
* Errors of the final pose against the identity: translation |t| (mm), rotation angle (deg), and
  the target registration error: the mean displacement over the bone voxels (HU > 200; a seeded
  sample of 4000 voxel centres) ``|R (x - c) + c + t - x|``, mm.

Usage::

    python benchmarks/volume_registration.py --force                      # 10 trials, two views, 128 px
    python benchmarks/volume_registration.py --views ap --append          # one view, appended to the file
    python benchmarks/volume_registration.py --trials 3 --size 64 --out /tmp/vr.md   # smoke test
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
ANGLES = {"ap": 0.0, "lat": 90.0, "lao45": 45.0, "rao45": -45.0}
SCHEDULE = [(4, 40, 1.0), (2, 80, 0.5), (1, 60, 0.2)]


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DATA, help="folder holding ct.nii.gz")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--size", type=int, default=128, help="detector pixels (square)")
    p.add_argument("--views", default="lao45,rao45", help="comma list of " + ", ".join(ANGLES))
    p.add_argument("--method", default="siddon", choices=["siddon", "trilinear"])
    p.add_argument("--loss", default="ngc", choices=["ngc", "mse"])
    p.add_argument("--schedule", default=None,
                   help=f"Python list of (binning factor, iterations, lr), default {SCHEDULE}")
    p.add_argument("--rot-deg", type=float, default=5.0)
    p.add_argument("--trans-mm", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=os.path.join(HERE, "results", "volume-registration-cpu.md"))
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--append", action="store_true", help="append to --out")
    p.add_argument("--note", default="", help="a line added under the table")
    return p.parse_args()


def build(args):
    import torch

    from taichi_xray.camera import Camera
    from taichi_xray.fit.register import downsample_camera
    from taichi_xray.objects import Volume
    from taichi_xray.physics import Detector, Spectrum
    from taichi_xray.pipeline import Pipeline, VolumeObject

    vol = Volume.load(os.path.join(args.data, "ct.nii.gz"), name="ct")
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    for v in views:
        if v not in ANGLES:
            sys.exit(f"unknown view {v!r}; use {', '.join(ANGLES)}")
    n = args.size
    cams = [Camera.c_arm(sid=800.0, sdd=1200.0, width=n, height=n, pixel_spacing=480.0 / n, lao=ANGLES[v],
                         isocenter=vol.centre) for v in views]
    spec, det = Spectrum.tungsten(80.0), Detector("energy", ("CsI", 0.6))
    schedule = SCHEDULE if args.schedule is None else [tuple(x) for x in ast.literal_eval(args.schedule)]
    for f, it, lr in schedule:
        if n % int(f):
            sys.exit(f"--size {n} is not a multiple of the binning factor {f}")
    pipes = {}
    for f in sorted({int(s[0]) for s in schedule} | {1}):
        pipes[f] = Pipeline([], [downsample_camera(c, f) for c in cams], materials=[],
                            volumes=[VolumeObject(vol, method=args.method)], spectrum=spec, detector=det,
                            output="line_integral", dtype=torch.float32)
    with torch.no_grad():
        target = pipes[1].render().to(torch.float64)  # (V, H, W), the true pose
    targets = {f: (target if f == 1 else torch.nn.functional.avg_pool2d(target[:, None], f)[:, 0]) for f in pipes}
    # target registration error points: bone voxel centres (world mm)
    rng = np.random.default_rng(0)
    ijk = np.argwhere(vol.values > 200.0)
    ijk = ijk[rng.choice(len(ijk), size=min(4000, len(ijk)), replace=False)]
    pts = vol.index_to_world(ijk.astype(np.float64))
    return dict(vol=vol, views=views, cams=cams, pipes=pipes, targets=targets, schedule=schedule, tre_points=pts)


def register_volume(S, p0, loss_name):
    """Adam over the levels; p0 (6,) = rotation vector (deg) + translation (mm). Returns (p (6,), iterations)."""
    import torch

    from taichi_xray.fit.losses import mse, ngc_loss

    p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    n_it = 0
    for f, iters, lr in S["schedule"]:
        pipe, tgt = S["pipes"][int(f)], S["targets"][int(f)]
        opt = torch.optim.Adam([p], lr=lr)
        decay = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1.0 / max(int(iters), 1)))
        for _ in range(int(iters)):
            opt.zero_grad()
            pose = torch.cat([torch.deg2rad(p[:3]), p[3:]])
            img = pipe.render_torch([], volume_poses={"ct": pose}).to(torch.float64)
            loss = ngc_loss(img, tgt) if loss_name == "ngc" else mse(img, tgt)
            loss.backward()
            opt.step()
            decay.step()
            n_it += 1
    return p.detach().numpy(), n_it


def errors(p, S):
    from scipy.spatial.transform import Rotation

    R = Rotation.from_rotvec(np.deg2rad(p[:3])).as_matrix()
    c = S["vol"].centre
    x = S["tre_points"]
    tre = np.linalg.norm((x - c) @ R.T + p[3:] - (x - c), axis=1)
    d = c - S["cams"][0].source
    d /= np.linalg.norm(d)  # the first view's central beam direction
    depth = float(abs(p[3:] @ d))
    return dict(trans=float(np.linalg.norm(p[3:])), rot=float(np.rad2deg(np.linalg.norm(np.deg2rad(p[:3])))),
                tre=float(tre.mean()), tre_max=float(tre.max()), depth=depth,
                inplane=float(np.linalg.norm(p[3:] - (p[3:] @ d) * d)))


def stats(x):
    x = np.asarray(x, dtype=np.float64)
    return [np.median(x), x.mean(), np.percentile(x, 90), x.max()]


def main():
    args = parse()
    if not os.path.isfile(os.path.join(args.data, "ct.nii.gz")):
        sys.exit(f"pelvis CT not found: {args.data} must hold ct.nii.gz (see ../shared/data/pelvis-ct/README.md). "
                 "Nothing was run.")
    _common.check_out(args.out, append=args.append, force=args.force)
    _common.bootstrap()
    import torch

    torch.set_num_threads(args.threads)
    info = _common.machine_info({"note": "2 cores shared with other sessions (load average below)"})
    t_all = time.perf_counter()
    S = build(args)
    # compile the kernels once (forward and backward) so that the first trial's time is not compile time
    t0 = time.perf_counter()
    register_volume(dict(S, schedule=[(f, 1, 0.0) for f in S["pipes"]]), np.zeros(6), args.loss)
    warm = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    rows = []
    for k in range(args.trials):
        p0 = np.concatenate([rng.uniform(-args.rot_deg, args.rot_deg, 3), rng.uniform(-args.trans_mm, args.trans_mm, 3)])
        e0 = errors(p0, S)
        tic = time.perf_counter()
        p, n_it = register_volume(S, p0, args.loss)
        dt = time.perf_counter() - tic
        e1 = errors(p, S)
        rows.append(dict(e0=e0, e1=e1, time=dt, iters=n_it, p=p))
        print(f"trial {k + 1}/{args.trials}: TRE {e0['tre']:6.2f} -> {e1['tre']:6.3f} mm, |t| {e0['trans']:5.2f} -> "
              f"{e1['trans']:6.3f} mm, rot {e0['rot']:5.2f} -> {e1['rot']:6.3f} deg, {dt:5.1f} s", flush=True)
    total = time.perf_counter() - t_all
    text = report(args, S, rows, info, total, warm)
    _common.write_out(args.out, text, append=args.append)
    print(text)
    print("written:", args.out)


def report(args, S, rows, info, total, warm):
    f = lambda v, nd=3: _common.fmt(v, nd)  # noqa: E731
    n = args.size
    head = ["quantity", "initial median", "final median:", "final mean:", "final 90th pct:", "final max:"]
    body = []
    for key, name in (("trans", "translation error \\|t\\| (mm)"),
                      ("depth", f"  along the {S['views'][0]} beam (mm)"),
                      ("inplane", f"  across the {S['views'][0]} beam (mm)"), ("rot", "rotation error (deg)"),
                      ("tre", "TRE, mean over 4000 bone voxels (mm)"), ("tre_max", "TRE, worst bone voxel (mm)")):
        s = stats([r["e1"][key] for r in rows])
        body.append([name, f(np.median([r["e0"][key] for r in rows]), 2)] + [f(v) for v in s])
    t = np.array([r["time"] for r in rows])
    it = rows[0]["iters"] if rows else 0
    bias = np.mean([r["p"] for r in rows], axis=0) if rows else np.zeros(6)
    ok = np.mean([r["e1"]["tre"] <= 0.5 for r in rows]) if rows else float("nan")
    lines = [
        f"# CT volume registered to its own DRRs: {len(S['views'])} view(s) ({', '.join(S['views'])}), {n}² px",
        "",
        f"Generated by `{_common.command_line(__file__)}` (`benchmarks/volume_registration.py`, see its docstring).",
        "",
        f"Pelvis CT (`ct.nii.gz`, {'x'.join(map(str, S['vol'].shape))} voxels, 3 mm) as a `VolumeObject` "
        f"(`{args.method}`, air/water/bone) in a `Pipeline`; 80 kVp, CsI 0.6 mm, line integral, float32. C-arm "
        f"SID 800 / SDD 1200 mm, {480.0 / n:.2f} mm pixels. Targets at the true pose; {len(rows)} starts "
        f"uniform in ±{args.trans_mm:g} mm / ±{args.rot_deg:g}° per component (seed {args.seed}). "
        f"Loss {args.loss.upper()}, Adam, schedule (binning, iterations, lr deg|mm decaying to lr/10): "
        f"{S['schedule']} = {it} iterations.",
        "",
        *_common.md_table(head, body),
        "",
        f"TRE ≤ 0.5 mm in {100 * ok:.0f} % of the trials. Mean final pose (bias; rotation vector deg, "
        f"translation mm): ({', '.join(f'{v:+.3f}' for v in bias)}).",
        "",
        f"Time per registration: median {np.median(t):.1f} s, mean {t.mean():.1f} s (min {t.min():.1f}, max "
        f"{t.max():.1f}) for {it} iterations ({1e3 * np.median(t) / max(it, 1):.0f} ms per iteration, all levels); "
        f"kernel compilation before the trials {warm:.1f} s; total {total / 60:.1f} min.",
    ]
    if args.note:
        lines += ["", args.note]
    lines += ["", *_common.machine_markdown(info)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
