"""Figures of docs/phantoms.md: the default PA chest and AP pelvis of the built-in phantoms,
ideal (point source, noise-free primary, ideal detector) and "realistic" (focal-spot blur,
CsI flat panel with its MTF and quantum + electronic noise, kernel scatter through a grid).

    .venv/bin/python tools/phantom_figures.py [--out docs/figures] [--size 512] [--force]
    .venv/bin/python tools/phantom_figures.py --write-scenes [--force]   # scenes/*-realistic.toml

Writes phantom-{chest,pelvis}-{new,realistic}.png (8-bit). Both images of a scene share one
grey-level window (the scene's ``[output] window``, or the 0.5-99.5 percentiles of the ideal
image when the scene says "auto"), so they can be compared pixel for pixel. The old
phantoms' figures (phantom-*-old.png) were rendered from the repository's previous commit
and are not remade here.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

try:
    import tomllib
except ImportError:                # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# the realistic exposure added to each scene (docs/scene-format.md: [source], [detector], [scatter])
REALISTIC = {
    # PA chest: 120 kVp, about 2 mAs at 1.8 m (AEC range for an adult), 1.2 mm focus, 10:1 grid
    # focused at the chest stand's distance
    "thorax": {"focal_mm": 1.2, "mAs": 2.0, "grid_focal_mm": 1800.0},
    # AP pelvis: 80 kVp, about 25 mAs at 1.15 m, 1.2 mm focus, 10:1 grid
    "pelvis": {"focal_mm": 1.2, "mAs": 25.0, "grid_focal_mm": 1150.0},
}
FIGURE = {"thorax": "chest", "pelvis": "pelvis"}


def scene_data(name, size):
    """The scene file's table with the detector resampled to size x size pixels (same width)."""
    path = ROOT / "scenes" / f"{name}.toml"
    data = tomllib.loads(path.read_text())
    w, _ = data["camera"]["detector"]
    data["camera"]["pixel_spacing"] *= w / size
    data["camera"]["detector"] = [size, size]
    return data, path


def realistic(data, name):
    """A copy of the scene table with the realistic source, detector and scatter keys."""
    r = REALISTIC[name]
    d = copy.deepcopy(data)
    d["source"] = {"focal_spot": {"width_mm": r["focal_mm"], "samples": 8, "seed": 3}, "mAs": r["mAs"]}
    d["detector"] = dict(d.get("detector", {}), preset="csi", electronic_noise=50.0, noise={"seed": 7})
    d["scatter"] = {"model": "kernel", "air_gap_mm": "auto",
                    "grid": {"ratio": 10, "lines_per_cm": 40, "strip_um": 45, "focal_mm": r["grid_focal_mm"]}}
    return d


def write_scenes(names, force=False):
    """scenes/NAME-realistic.toml: the shipped scene file's table with :func:`realistic`'s keys."""
    import tomli_w

    for name in names:
        path = ROOT / "scenes" / f"{name}.toml"
        data = realistic(tomllib.loads(path.read_text()), name)
        data["scene"] = dict(data.get("scene", {}), name=f"{data.get('scene', {}).get('name', name)}-realistic",
                             description=data.get("scene", {}).get("description", "") +
                             "; focal spot, CsI panel with blur and noise, kernel scatter through a 10:1 grid")
        out = ROOT / "scenes" / f"{name}-realistic.toml"
        if out.exists() and not force:
            raise SystemExit(f"{out} exists (use --force)")
        head = (f"# {path.name} with a realistic exposure: written by tools/phantom_figures.py --write-scenes\n"
                f"# (edit {path.name} or tools/phantom_figures.py, then rerun it). Keys: docs/scene-format.md.\n"
                f"#   taichi-xray render scenes/{out.name} -o {name}-realistic.png\n\n")
        out.write_text(head + tomli_w.dumps(data))
        print(f"wrote {out}")
    return 0


def main(argv=None):
    from taichi_xray.imageio import robust_window, save_png
    from taichi_xray.render import render
    from taichi_xray.scene import parse_scene

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "figures"), help="output folder")
    ap.add_argument("--size", type=int, default=512, help="detector pixels per side (default 512)")
    ap.add_argument("--scenes", default="thorax,pelvis", help="comma-separated: thorax, pelvis")
    ap.add_argument("--force", action="store_true", help="overwrite existing figures")
    ap.add_argument("--write-scenes", action="store_true",
                    help="write scenes/NAME-realistic.toml (the shipped scene plus the realistic keys) and stop")
    a = ap.parse_args(argv)
    if a.write_scenes:
        return write_scenes(a.scenes.split(","), a.force)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.scenes.split(","):
        if name not in REALISTIC:
            raise SystemExit(f"unknown scene {name!r}; expected thorax or pelvis")
        data, path = scene_data(name, a.size)
        t0 = time.perf_counter()
        ideal = render(parse_scene(data, path))            # raises if any object breaks its nesting
        t1 = time.perf_counter()
        real = render(parse_scene(realistic(data, name), path))
        t2 = time.perf_counter()
        win = data["output"].get("window", "auto")
        win = robust_window(ideal.line_integral) if win == "auto" else tuple(win)
        for tag, r in (("new", ideal), ("realistic", real)):
            p = out / f"phantom-{FIGURE[name]}-{tag}.png"
            save_png(p, r.line_integral, bits=8, window=win, overwrite=a.force)
            print(f"wrote {p} (window {win[0]:.3g}..{win[1]:.3g})")
        print(f"{name}: ideal {t1 - t0:.1f} s, realistic {t2 - t1:.1f} s (incl. scene loading)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
