"""Anatomy phantoms of an adult male: PA-chest thorax and AP pelvis, built from closed
triangle meshes (LPS world frame, mm: +x patient's left, +y posterior, +z superior).

``thorax(resolution)`` and ``pelvis(resolution)`` return a :class:`Phantom`: an ordered
list of :class:`PhantomObject` (name, vertices (N, 3) float64 mm, faces (M, 3) int64
counter-clockwise seen from outside, material, parent).  Every mesh is watertight,
outward and does not cross itself; a child lies inside its parent and siblings are
disjoint (a bone's trabecular core ``X_core`` is the child of its cortical shell ``X``).
See docs/phantoms.md for what is modelled, the dimensions and densities and their sources.

The meshes are generated in code (implicit shapes meshed by marching cubes and
simplified, swept tubes, grown vessel trees); nothing is read from ../shared.  Building
takes tens of seconds, so each (phantom, resolution) is kept in memory and in an on-disk
cache: ``$TAICHI_XRAY_CACHE`` (a folder; ``off`` disables it), else
``$XDG_CACHE_HOME/taichi_xray`` or ``~/.cache/taichi_xray``.  Cache files are named after a
hash of the generator's source and the numpy / scipy / scikit-image versions, so a code
change rebuilds them; an unreadable or unwritable cache is ignored.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ._base import MATERIALS, RESOLUTIONS, Phantom, PhantomObject, Res, write_phantom

__all__ = ["MATERIALS", "RESOLUTIONS", "PhantomObject", "Phantom", "thorax", "pelvis", "write_phantom",
           "cache_dir", "build"]

_MEM: dict = {}


def cache_dir():
    """Folder of the on-disk phantom cache (Path), or None when disabled."""
    env = os.environ.get("TAICHI_XRAY_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "no", "false") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "taichi_xray"


def _source_hash():
    import scipy
    import skimage

    h = hashlib.sha256()
    here = Path(__file__).parent
    for p in sorted(here.glob("*.py")) + [here.parent / "primitives.py"]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(f"{np.__version__} {scipy.__version__} {skimage.__version__}".encode())
    return h.hexdigest()[:16]


def _load(path):
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        objs = [PhantomObject(m["name"], z[f"v{i}"].astype(np.float64), z[f"f{i}"].astype(np.int64),
                              m["material"], m["parent"]) for i, m in enumerate(meta["objects"])]
    return Phantom(meta["name"], objs)


def _save(ph, path):
    meta = {"name": ph.name, "objects": [{"name": o.name, "material": o.material, "parent": o.parent} for o in ph]}
    arrays = {"meta": np.array(json.dumps(meta))}
    for i, o in enumerate(ph):
        arrays[f"v{i}"] = o.vertices
        arrays[f"f{i}"] = o.faces.astype(np.int32)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)          # atomic: concurrent builders never see half a file


def build(name, resolution="default", cache=True):
    """The phantom ``name`` ("thorax" or "pelvis") at ``resolution``, built or read from
    the caches (a fresh deep copy each call: callers may modify it)."""
    if name not in ("thorax", "pelvis"):
        raise ValueError(f"unknown phantom {name!r}; expected 'thorax' or 'pelvis'")
    Res(resolution)                                    # validates the resolution
    key = (name, resolution)
    if cache and key in _MEM:
        return copy.deepcopy(_MEM[key])
    d = cache_dir() if cache else None
    path = None
    if d is not None:
        path = d / f"phantom-{name}-{resolution}-{_source_hash()}.npz"
        if path.is_file():
            try:
                ph = _load(path)
                _MEM[key] = ph
                return copy.deepcopy(ph)
            except Exception:              # a damaged cache file: rebuild it
                pass
    if name == "thorax":
        from ._thorax import build_thorax as make
    else:
        from ._pelvis import build_pelvis as make
    ph = make(resolution)
    if cache:
        _MEM[key] = ph
        if path is not None:
            try:
                _save(ph, path)
            except OSError:
                pass
    return copy.deepcopy(ph)


def thorax(resolution="default"):
    """Adult male thorax for a PA chest radiograph (LPS mm; see docs/phantoms.md).

    Objects (parent ``body`` unless noted; ``X_core`` is trabecular bone inside cortical
    ``X``): body (soft tissue: trunk, neck, shoulders, upper arms); lung_right/left (lung)
    with vessels_right/left (blood; children of the lungs); heart, aorta,
    vena_cava_superior, pulmonary_arteries, pulmonary_veins (blood); trachea (air:
    trachea and main/lobar bronchi); liver (soft tissue); stomach_gas (air); sternum;
    rib_R01..R12, rib_L01..L12; costal_cartilage_R01..R10, _L01..L10 (soft tissue);
    clavicle_R/L; scapula_R/L (trabecular bone, no core); humerus_R/L; vertebra_C05..C07,
    vertebra_T01..T12, vertebra_L01..L03.
    resolution: "low", "default" (about 150k faces) or "high".
    """
    return build("thorax", resolution)


def pelvis(resolution="default"):
    """Adult male pelvis for an AP pelvis radiograph (LPS mm, hip centres at (+-88, 0, 0);
    see docs/phantoms.md).

    Objects (parent ``body`` unless noted; ``X_core`` is trabecular bone inside cortical
    ``X``): body (soft tissue); vertebra_L4, vertebra_L5; sacrum (with foramina);
    hip_R/L (ilium, ischium, pubis, acetabulum); femur_R/L; bladder (soft tissue);
    rectal_gas (air).  resolution: "low", "default" or "high".
    """
    return build("pelvis", resolution)
