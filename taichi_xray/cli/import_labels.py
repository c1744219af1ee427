"""``taichi-xray import-labels CT_LABELS --labels ... -o scene.toml``: mesh the structures of a CT
label map (NIfTI) and write a scene file (meshes go to ``<stem>_meshes/``)."""
from __future__ import annotations

from .common import UsageError, check_input_file, log

__all__ = ["add_parser", "run", "parse_label_spec"]


def add_parser(subparsers):
    m = subparsers.add_parser("import-labels", help="mesh labels of a CT label map (NIfTI) and write a scene file")
    m.add_argument("labels_file", metavar="CT_LABELS", help="NIfTI label map (labels.json beside it names the ids)")
    m.add_argument("--labels", required=True,
                   help="structures to mesh: NAME=ID or NAME=ID+ID+... (merged), or label names, comma-separated")
    m.add_argument("--materials", help="NAME=MATERIAL,... (default: cortical_bone for bones, else soft_tissue)")
    m.add_argument("--parents", help="NAME=PARENT,... for nested structures")
    m.add_argument("--smooth", type=int, default=10, help="Taubin smoothing iterations (default 10)")
    m.add_argument("--target-faces", type=int, help="coarsen each mesh to about this many faces")
    m.add_argument("--size", type=int, default=512, help="detector size in pixels (square, default 512)")
    m.add_argument("-o", "--output", required=True, help="scene file (.toml); meshes go to <stem>_meshes/")
    m.add_argument("--force", action="store_true", help="overwrite existing outputs")
    m.set_defaults(func=run)
    return m


def parse_label_spec(text: str) -> dict:
    """'femur=3,organ=9+10,liver' -> {'femur': 3, 'organ': [9, 10], 'liver': 'liver'}."""
    spec: dict = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            name, ids = (x.strip() for x in item.split("=", 1))
            parts = [int(x) if x.strip().lstrip("-").isdigit() else x.strip() for x in ids.split("+")]
            spec[name] = parts if len(parts) > 1 else parts[0]
        else:
            spec[item] = item
    if not spec:
        raise UsageError("--labels: no structures given")
    return spec


def run(args) -> int:
    from ..ct.scene_export import labels_to_scene, parse_assignments

    spec = parse_label_spec(args.labels)
    check_input_file(args.labels_file, "label map")
    out = labels_to_scene(
        args.labels_file, spec, args.output,
        materials=parse_assignments(args.materials, "--materials"),
        parents=parse_assignments(args.parents, "--parents"),
        smooth_iterations=args.smooth, target_faces=args.target_faces, size=args.size, overwrite=args.force,
    )
    log.info("wrote %s and %s/", out, out.parent / f"{out.stem}_meshes")
    return 0
