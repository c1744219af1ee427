"""Open the interactive viewer on the thorax scene (or render a short LAO sweep off-screen).

    .venv/bin/python demos/view_thorax.py                      # window (needs Vulkan and a display)
    .venv/bin/python demos/view_thorax.py --offscreen OUT_DIR  # 8 frames, LAO -45..45, no window
    .venv/bin/python demos/view_thorax.py --size 256x256       # smaller detector, faster on a CPU

Same as ``taichi-xray view scenes/thorax.toml [...]``. Without Vulkan it prints one
line naming the packages to install (Debian: mesa-vulkan-drivers libvulkan1).
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from taichi_xray.viewer import main  # noqa: E402


def run(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--offscreen", metavar="OUT_DIR", help="render 8 frames into this (existing, empty) folder")
    p.add_argument("--size", default=None, help="detector WxH (default: the scene's 512x512)")
    p.add_argument("--arch", default=None, help="Taichi backend (cpu, cuda, vulkan, auto)")
    a = p.parse_args(argv)
    args = [str(ROOT / "scenes" / "thorax.toml")]
    if a.size:
        args += ["--size", a.size]
    if a.arch:
        args += ["--arch", a.arch]
    if a.offscreen:
        args += ["--offscreen", "--frames", "8", "--out", a.offscreen, "--save-window"]
    return main(args)


if __name__ == "__main__":
    sys.exit(run())
