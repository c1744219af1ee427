"""`taichi-xray import-labels`: label map -> meshes + scene file that loads and renders."""
import json

import numpy as np
import pytest

from taichi_xray.cli import main
from taichi_xray.render import render
from taichi_xray.scene import load_scene

nib = pytest.importorskip("nibabel")


@pytest.fixture
def label_file(tmp_path):
    lab = np.zeros((40, 36, 32), dtype=np.int16)
    g = np.mgrid[0:40, 0:36, 0:32]
    lab[((g[0] - 12) ** 2 + (g[1] - 18) ** 2 + (g[2] - 16) ** 2) < 36] = 7  # sphere r=6 voxels
    lab[26:34, 10:26, 8:24] = 9  # a box
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-40, -36, -32]
    path = tmp_path / "seg.nii.gz"
    nib.save(nib.Nifti1Image(lab, affine), str(path))
    (tmp_path / "labels.json").write_text(json.dumps({"7": "femur_left", "9": "liver"}))
    return path


def test_import_labels_writes_a_scene_that_renders(label_file, tmp_path, capsys):
    out = tmp_path / "out" / "ct.toml"
    out.parent.mkdir()
    rc = main(["import-labels", str(label_file), "--labels", "femur_left,organ=9", "-o", str(out), "--size", "64"])
    assert rc == 0, capsys.readouterr().err
    sc = load_scene(out)
    assert sc.names == ["femur_left", "organ"]
    assert [o.material_name for o in sc.objects] == ["cortical_bone", "soft_tissue"]
    assert all(o.mesh.check().outward for o in sc.objects)
    # sphere volume (r = 12 mm) within the marching-cubes / smoothing error
    assert abs(sc.objects[0].mesh.volume() / (4 / 3 * np.pi * 12 ** 3) - 1) < 0.12
    res = render(sc)
    img = res.image
    assert img.shape == (64, 64) and np.isfinite(img).all() and img.max() > 0
    # never overwrite
    rc = main(["import-labels", str(label_file), "--labels", "femur_left", "-o", str(out)])
    assert rc == 2 and "exists" in capsys.readouterr().err


def test_import_labels_errors(label_file, tmp_path, capsys):
    rc = main(["import-labels", str(label_file), "--labels", "spleen", "-o", str(tmp_path / "x.toml")])
    assert rc == 2 and "spleen" in capsys.readouterr().err
    rc = main(["import-labels", str(label_file), "--labels", "liver", "--materials", "liver=unobtainium",
               "-o", str(tmp_path / "y.toml")])
    assert rc == 2 and "unobtainium" in capsys.readouterr().err
    rc = main(["import-labels", str(label_file), "--labels", "liver", "-o", str(tmp_path / "z.txt")])
    assert rc == 2 and ".toml" in capsys.readouterr().err
