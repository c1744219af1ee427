"""``taichi-xray info SCENE``: materials, mesh checks, geometry, spectrum and memory of a scene
(printed to stdout; nothing is rendered and no backend is started)."""
from __future__ import annotations

import numpy as np

from .common import add_scene_options, load_scene_args

__all__ = ["add_parser", "run"]


def add_parser(subparsers):
    i = subparsers.add_parser("info", help="materials, meshes, geometry, spectrum and memory of a scene")
    add_scene_options(i)
    i.set_defaults(func=run)
    return i


def run(args) -> int:
    from ..physics import get_material
    from ..render import memory_estimate

    scene = load_scene_args(args)
    cam, spec, det = scene.camera, scene.spectrum, scene.detector
    p = print
    p(f"scene     {scene.label} ({scene.name})" + (f": {scene.description}" if scene.description else ""))
    # geometry
    cs = scene.camera_spec
    s = cam.source + 0.0  # no "-0.0"
    p("geometry")
    if cs.kind == "c_arm":
        iso = np.asarray(cs.isocenter)
        lao = cs.lao if args.lao is None else args.lao
        cran = cs.cran if args.cran is None else args.cran
        p(f"  C-arm     LAO {lao:g} deg, CRAN {cran:g} deg, {'radiological' if cs.radiological else 'source'} view")
        mag = cs.sdd / cs.sid
        p(f"  distances source-isocentre {cs.sid:g} mm, source-detector {cs.sdd:g} mm")
    else:
        lo = np.min([o.mesh.bounds[0] for o in scene.objects], axis=0)
        hi = np.max([o.mesh.bounds[1] for o in scene.objects], axis=0)
        iso = 0.5 * (lo + hi)
        _, w = cam.project(iso[None])
        mag = cam.detector_distance / float(w[0]) if cam.pixel_spacing else float("nan")
        p("  camera    raw projection matrix P (isocentre taken as the centre of the objects' bounds)")
    p(f"  source    ({s[0]:.1f}, {s[1]:.1f}, {s[2]:.1f}) mm")
    iso = np.asarray(iso, dtype=float) + 0.0
    p(f"  isocentre ({iso[0]:.1f}, {iso[1]:.1f}, {iso[2]:.1f}) mm")
    p(f"  view dir  ({cam.view_direction[0]:.3f}, {cam.view_direction[1]:.3f}, {cam.view_direction[2]:.3f})"
      " (source -> detector)")
    if cam.pixel_spacing:
        dw, dh = cam.width * cam.pixel_spacing, cam.height * cam.pixel_spacing
        p(f"  detector  {cam.width} x {cam.height} px of {cam.pixel_spacing:.4g} mm = {dw:.1f} x {dh:.1f} mm")
        p(f"  magnification {mag:.3f}; field of view at the isocentre {dw / mag:.1f} x {dh / mag:.1f} mm")
    else:
        p(f"  detector  {cam.width} x {cam.height} px (pixel spacing not given); focal length "
          f"{cam.focal_length_px:.1f} px")
    # spectrum
    sp = scene.spectrum_spec
    p("spectrum")
    if sp.kind == "tungsten":
        kvp = sp.kvp if args.kvp is None else args.kvp
        filt = ", ".join(f"{k} {v:g} mm" for k, v in (sp.filtration or {}).items()) or "none added"
        p(f"  tungsten  {kvp:g} kVp (TASMIP), filtration {filt}, {len(spec)} bins of {sp.bin_width:g} keV")
    elif sp.kind == "monochromatic":
        p(f"  monochromatic {sp.energy:g} keV")
    else:
        p(f"  from file {sp.csv} ({len(spec)} bins)")
    emean = spec.mean_energy()
    try:
        hvl = f"{spec.hvl1():.2f} mm Al"
    except ValueError as exc:
        hvl = f"n/a ({exc})"
    p(f"  mean energy {emean:.2f} keV, HVL1 {hvl}")
    sc = "ideal absorber" if det.scintillator is None else \
        f"{det.scintillator[0].name} {det.scintillator[1]:g} mm"
    p(f"detector  {'energy-integrating' if det.kind == 'energy' else 'photon-counting'}, {sc}")
    # materials
    p(f"materials (mu at the mean energy {emean:.1f} keV)")
    used: dict = {}
    for o in scene.objects:
        if o.material is None:  # a tetrahedral mesh: its basis materials
            for b in o.mesh.basis:
                used.setdefault(b, (get_material(b), []))[1].append(o.name)
            continue
        used.setdefault(o.material_name, (o.material, []))[1].append(o.name)
    for v in scene.volumes:
        for m in v.conversion.materials:
            used.setdefault(m.name, (m, []))[1].append(f"volume {v.name}")
    if scene.output.air:
        used.setdefault("air", (get_material("air"), []))[1].append("(beam path)")
    p(f"  {'name':<26} {'density g/cm3':>13} {'mu 1/mm':>10} {'mu/rho cm2/g':>12}  objects")
    for name, (m, objs) in used.items():
        mu = float(m.mu([emean])[0])
        tag = " (custom)" if name in scene.materials else "" if name == m.name else f" = {m.name}"
        shown = ", ".join(objs[:4]) + (f", ... ({len(objs)})" if len(objs) > 4 else "")
        p(f"  {name + tag:<26} {m.density:>13.5g} {mu:>10.4g} {mu * 10 / m.density:>12.4g}  {shown}")
    # objects
    p(f"objects ({len(scene.objects)}, {sum(o.mesh.n_faces for o in scene.objects)} faces)")
    p(f"  {'#':>3} {'name':<20} {'material':<16} {'parent':<14} {'faces':>7} {'volume cm3':>10} "
      f"{'watertight':>10} {'outward':>7}  problems")
    for i, o in enumerate(scene.objects, 1):
        if o.material is None:  # a tetrahedral mesh
            tm = o.mesh
            rb = tm.boundary().check()
            p(f"  {i:>3} {o.name:<20} {'tets: ' + '+'.join(tm.basis):<16} {o.parent or '-':<14} {tm.n_faces:>7} "
              f"{tm.volume() / 1e3:>10.2f} {'yes' if rb.watertight else 'NO':>10} {'yes' if rb.outward else 'NO':>7}  "
              f"{tm.n_tets} tetrahedra, {tm.kind} densities")
            continue
        r = o.mesh.check()
        probs = "; ".join(r.problems()) or "-"
        p(f"  {i:>3} {o.name:<20} {o.material_name:<16} {o.parent or '-':<14} {r.n_faces:>7} "
          f"{r.volume / 1e3:>10.2f} {'yes' if r.watertight else 'NO':>10} {'yes' if r.outward else 'NO':>7}  {probs}")
    if scene.volumes:
        p(f"volumes ({len(scene.volumes)})")
        for v in scene.volumes:
            vol = v.volume
            vals = np.asarray(vol.values)
            sp = ", ".join(f"{x:.3g}" for x in vol.spacing)
            p(f"  {v.name:<20} {' x '.join(map(str, vol.shape))} voxels of {sp} mm, HU {vals.min():.0f} .. "
              f"{vals.max():.0f}; {v.conversion.name} -> {', '.join(m.name for m in v.conversion.materials)}; "
              f"{v.method}; {vals.size * len(v.conversion.materials) * 4 / 2 ** 20:.1f} MiB on the device")
    mem = memory_estimate(scene)
    mib = 1024 ** 2
    p(f"memory estimate ({cam.width}x{cam.height}, {len(scene.objects)} objects): {mem['total'] / mib:.1f} MiB "
      f"(rasterize {mem['rasterize'] / mib:.1f}, physics {mem['physics'] / mib:.1f}, "
      f"output {mem['output'] / mib:.1f})")
    return 0
