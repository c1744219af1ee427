"""Write scenes/thorax.toml and scenes/pelvis.toml: one [[object]] per object of the
built-in phantoms (taichi_xray.phantoms), in the phantom's order, with its parent.

    .venv/bin/python tools/phantom_scenes.py [--force]

Run it after changing the phantoms' object lists.  The camera, spectrum, detector and
output sections are written from the templates below.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from taichi_xray import phantoms  # noqa: E402

HEADERS = {
    "thorax": '''# PA chest radiograph of the built-in thorax phantom (taichi_xray.phantoms.thorax).
# The quick-start scene:  taichi-xray render scenes/thorax.toml -o chest.png
# Format: docs/scene-format.md; the phantom: docs/phantoms.md. Units: mm, keV, degrees, g/cm^3.
# Object list written by tools/phantom_scenes.py.

[scene]
name = "thorax-pa"
description = "PA chest view of the adult male thorax phantom, 120 kVp, CsI flat panel"
phantom_resolution = "default"

[camera]
# Source behind the patient (PA), chest-stand geometry: 1.8 m source-detector distance,
# patient 150 mm in front of the detector; 430 mm wide flat panel with 512 pixels.
sid = 1650.0
sdd = 1800.0
detector = [512, 512]
pixel_spacing = 0.84
lao = 0.0
cran = 0.0
isocenter = [0.0, 0.0, 0.0]
radiological = true

[spectrum]
# high-kV chest technique (120 kVp), as recommended for PA chest radiography
kvp = 120
filtration = { Al = 2.5, Cu = 0.1 }
bin_width = 2.0

[detector]
kind = "energy"
scintillator = { material = "CsI", thickness_mm = 0.6 }

[output]
# a chest window: the lung fields sit near its dark end, air outside the body is black
kind = "line_integral"
bits = 8
window = [1.6, 5.3]
invert = false
air = true
''',
    "pelvis": '''# AP pelvis radiograph of the built-in pelvis phantom (taichi_xray.phantoms.pelvis).
#   taichi-xray render scenes/pelvis.toml -o pelvis.png
# Format: docs/scene-format.md; the phantom: docs/phantoms.md. Units: mm, keV, degrees, g/cm^3.
# Object list written by tools/phantom_scenes.py.

[scene]
name = "pelvis-ap"
description = "Frontal view of the adult male pelvis phantom, 80 kVp, CsI flat panel"
phantom_resolution = "default"

[camera]
# Under-table C-arm: source posterior, 1.15 m source-detector distance, 430 mm flat panel;
# centred between the iliac crests and the lesser trochanters.
sid = 1000.0
sdd = 1150.0
detector = [512, 512]
pixel_spacing = 0.84
lao = 0.0
cran = 0.0
isocenter = [0.0, 0.0, 10.0]
radiological = true

[spectrum]
kvp = 80
filtration = { Al = 2.5, Cu = 0.1 }
bin_width = 2.0

[detector]
kind = "energy"
scintillator = { material = "CsI", thickness_mm = 0.6 }

[output]
kind = "line_integral"
bits = 8
window = "auto"
air = true
''',
}


def scene_text(name):
    ph = getattr(phantoms, name)("default")
    lines = [HEADERS[name], f"# {len(ph)} objects; a child is listed after its parent. The renderer gives each object",
             "# its own length minus its children's.", ""]
    for o in ph:
        lines += ["[[object]]", f'name = "{o.name}"', f'mesh = "phantom:{name}/{o.name}"',
                  f'material = "{o.material}"']
        if o.parent is not None:
            lines.append(f'parent = "{o.parent}"')
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="overwrite the scene files")
    args = ap.parse_args(argv)
    for name in ("thorax", "pelvis"):
        path = ROOT / "scenes" / f"{name}.toml"
        if path.exists() and not args.force:
            print(f"{path} exists (use --force to overwrite)")
            continue
        path.write_text(scene_text(name))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
