"""Phantom containers: :class:`PhantomObject`, :class:`Phantom`, :func:`write_phantom`."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

MATERIALS = ("soft_tissue", "lung", "adipose", "blood", "cortical_bone", "trabecular_bone",
             "skeletal_muscle", "air")

RESOLUTIONS = ("low", "default", "high")


@dataclass
class PhantomObject:
    """One closed mesh: vertices (N, 3) float64 mm, faces (M, 3) int64 outward, a material
    name from :data:`MATERIALS`, and the name of the containing object (None: top level)."""

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    material: str
    parent: str | None = None

    def __post_init__(self):
        if self.material not in MATERIALS:
            raise ValueError(f"object {self.name!r}: unknown material {self.material!r}; "
                             f"expected one of {MATERIALS}")
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"object {self.name!r}: vertices must be (N, 3), got {self.vertices.shape}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"object {self.name!r}: faces must be (M, 3), got {self.faces.shape}")


@dataclass
class Phantom:
    """Ordered list of :class:`PhantomObject`; parents come before their children."""

    name: str
    objects: list = field(default_factory=list)

    def __post_init__(self):
        seen = set()
        for o in self.objects:
            if o.name in seen:
                raise ValueError(f"duplicate object name {o.name!r}")
            if o.parent is not None and o.parent not in seen:
                raise ValueError(f"object {o.name!r}: parent {o.parent!r} must be listed before it")
            seen.add(o.name)

    def __iter__(self):
        return iter(self.objects)

    def __len__(self):
        return len(self.objects)

    def __getitem__(self, name):
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"no object named {name!r} in phantom {self.name!r}")

    @property
    def names(self):
        return [o.name for o in self.objects]

    def children(self, name):
        """Objects whose parent is ``name`` (None: the top-level objects)."""
        return [o for o in self.objects if o.parent == name]

    @property
    def n_faces(self):
        return sum(len(o.faces) for o in self.objects)

    def to_meshes(self):
        """Ordered dict name -> (vertices (N, 3) float64 mm, faces (M, 3) int64)."""
        return {o.name: (o.vertices, o.faces) for o in self.objects}


def write_phantom(phantom, directory, fmt="stl", overwrite=False, manifest=True):
    """Write one mesh file per object, ``<directory>/<name>.<fmt>``, with meshio.

    fmt: a meshio file extension such as "stl" (binary), "obj", "ply", "vtk".  With
    ``manifest`` also writes ``<directory>/<phantom.name>.json`` listing, in order, each
    object's name, file, material and parent.  The directory is created if needed.
    Existing files are only replaced when ``overwrite=True``; otherwise FileExistsError
    names the first existing path and nothing is written.
    Returns the list of written mesh paths, in the phantom's order.
    """
    import json

    import meshio

    if not isinstance(phantom, Phantom):
        raise TypeError(f"phantom must be a Phantom, got {type(phantom).__name__}")
    fmt = str(fmt).lstrip(".").lower()
    if not fmt.isalnum():
        raise ValueError(f"bad file format {fmt!r}")
    directory = os.fspath(directory)
    paths = [os.path.join(directory, f"{o.name}.{fmt}") for o in phantom]
    man = os.path.join(directory, f"{phantom.name}.json")
    if not overwrite:
        for p in paths + ([man] if manifest else []):
            if os.path.exists(p):
                raise FileExistsError(f"{p} exists (pass overwrite=True to replace it)")
    os.makedirs(directory, exist_ok=True)
    for o, p in zip(phantom, paths):
        meshio.write(p, meshio.Mesh(o.vertices, [("triangle", o.faces)]),
                     **({"binary": True} if fmt == "stl" else {}))
    if manifest:
        entries = [{"name": o.name, "file": os.path.basename(p), "material": o.material, "parent": o.parent}
                   for o, p in zip(phantom, paths)]
        with open(man, "w") as f:
            json.dump({"phantom": phantom.name, "units": "mm", "frame": "LPS", "objects": entries}, f, indent=1)
    return paths


class Res:
    """Tessellation level: ``h(mm)`` scales a grid spacing, ``n(count)`` a vertex count.

    "low" has about 40 % of the faces of "default", "high" about 2.5 times as many."""

    _F = {"low": 0.62, "default": 1.0, "high": 1.6}

    def __init__(self, resolution):
        if resolution not in self._F:
            raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")
        self.name = resolution
        self.f = self._F[resolution]

    def h(self, h_default):
        return h_default / self.f

    def n(self, n_default, lo=3):
        return max(lo, int(round(n_default * self.f)))
