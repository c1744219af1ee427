"""CT label map -> mesh files + a scene file (``taichi-xray import-labels``).

The meshes come from :func:`taichi_xray.ct.labels_to_meshes` (marching cubes on
the padded label masks, Taubin smoothing, LPS world mm). They are written as
STL files into a folder beside the scene file, and the scene refers to them
by relative paths, so the pair can be moved together.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from .labels import labels_to_meshes

__all__ = ["labels_to_scene", "parse_assignments", "guess_material"]

_BONE_WORDS = ("hip", "femur", "sacrum", "vertebra", "rib", "sternum", "scapula", "clavicle", "humerus",
               "skull", "bone", "pelvis", "tibia", "fibula", "patella", "spine")


def guess_material(name: str) -> str:
    """A default material for a structure name: cortical bone for bones, soft tissue otherwise."""
    n = name.lower()
    if any(w in n for w in _BONE_WORDS):
        return "cortical_bone"
    if "lung" in n:
        return "lung"
    return "soft_tissue"


def parse_assignments(text: str | None, what: str) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}``, with a clear error naming ``what``."""
    out: dict[str, str] = {}
    if not text:
        return out
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            raise ValueError(f"{what}: expected NAME=VALUE, got {item!r}")
        k, v = (s.strip() for s in item.split("=", 1))
        if not k or not v:
            raise ValueError(f"{what}: expected NAME=VALUE, got {item!r}")
        if k in out:
            raise ValueError(f"{what}: {k!r} given twice")
        out[k] = v
    return out


def _toml_value(v) -> str:
    import tomli_w

    return tomli_w.dumps({"x": v})[4:].strip()


def labels_to_scene(
    labels_path,
    labels: Mapping[str, object] | None,
    out_path,
    *,
    materials: Mapping[str, str] | None = None,
    parents: Mapping[str, str] | None = None,
    smooth_iterations: int = 10,
    target_faces: int | None = None,
    size: int = 512,
    sid: float = 1000.0,
    sdd: float = 1500.0,
    kvp: float = 80.0,
    overwrite: bool = False,
) -> Path:
    """Mesh the chosen labels and write ``out_path`` (TOML) plus ``<stem>_meshes/NAME.stl``.

    The camera is a PA C-arm whose isocentre is the centre of the meshes'
    bounding box and whose detector covers that box with a 20 % margin at the
    isocentre. Returns the scene path. Existing files are never replaced
    unless ``overwrite``; every output is checked before anything is written.
    """
    from ..physics import get_material

    out_path = Path(out_path)
    if out_path.suffix != ".toml":
        raise ValueError(f"{out_path}: the scene file must end in .toml")
    mesh_dir = out_path.parent / f"{out_path.stem}_meshes"
    meshes = labels_to_meshes(labels_path, labels, smooth_iterations=smooth_iterations, target_faces=target_faces)
    materials = dict(materials or {})
    parents = dict(parents or {})
    for k in list(materials) + list(parents):
        if k not in meshes:
            raise KeyError(f"{k!r} is not one of the meshed structures ({', '.join(meshes)})")
    for k, p in parents.items():
        if p not in meshes:
            raise KeyError(f"parent {p!r} of {k!r} is not one of the meshed structures ({', '.join(meshes)})")
    mats = {name: materials.get(name, guess_material(name)) for name in meshes}
    for name, m in mats.items():
        get_material(m)  # unknown materials fail here, before anything is written
    files = {name: mesh_dir / f"{name}.stl" for name in meshes}
    if not overwrite:
        for p in [out_path, *files.values()]:
            if p.exists():
                raise FileExistsError(f"{p} exists; pass overwrite=True (--force) to replace it")
    mesh_dir.mkdir(parents=True, exist_ok=True)
    for name, mesh in meshes.items():
        mesh.save(files[name], overwrite=overwrite, binary=True)

    lo = np.min([m.bounds[0] for m in meshes.values()], axis=0)
    hi = np.max([m.bounds[1] for m in meshes.values()], axis=0)
    iso = 0.5 * (lo + hi)
    extent = float(max(hi[0] - lo[0], hi[2] - lo[2])) * 1.2  # PA view: x across, z up
    spacing = extent * sdd / sid / size
    lines = [
        f"# Imported from {os.fspath(labels_path)} by taichi-xray import-labels.",
        "# Meshes: marching cubes on the label masks (LPS world mm); format: docs/scene-format.md.",
        "",
        "[scene]",
        f"name = {_toml_value(out_path.stem)}",
        f"description = {_toml_value('structures ' + ', '.join(meshes))}",
        "",
        "[camera]",
        f"sid = {sid!r}",
        f"sdd = {sdd!r}",
        f"detector = [{size}, {size}]",
        f"pixel_spacing = {spacing:.6g}",
        f"isocenter = [{iso[0]:.4f}, {iso[1]:.4f}, {iso[2]:.4f}]",
        "",
        "[spectrum]",
        f"kvp = {kvp!r}",
        "filtration = { Al = 2.5 }",
        "",
        "[detector]",
        'kind = "energy"',
        'scintillator = { material = "CsI", thickness_mm = 0.6 }',
        "",
        "[output]",
        'kind = "line_integral"',
        'window = "auto"',
        "",
    ]
    for name in meshes:
        lines += ["[[object]]", f"name = {_toml_value(name)}",
                  f"mesh = {_toml_value(files[name].relative_to(out_path.parent).as_posix())}",
                  f"material = {_toml_value(mats[name])}"]
        if name in parents:
            lines.append(f"parent = {_toml_value(parents[name])}")
        lines.append("")
    out_path.write_text("\n".join(lines))
    return out_path
