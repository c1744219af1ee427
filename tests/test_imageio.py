import numpy as np
import pytest

from taichi_xray.imageio import (load_projection_matrix, read_png, robust_window, save_npy,
                                 save_png, save_projection_matrix, save_tiff, to_uint)


def test_png16_roundtrip_exact(tmp_path):
    a = (np.arange(64 * 48, dtype=np.int64) * 21 % 65536).astype(np.uint16).reshape(64, 48)
    p = save_png(tmp_path / "a.png", a, bits=16)
    b = read_png(p)
    assert b.dtype == np.uint16 and b.shape == a.shape and np.array_equal(a, b)


def test_png8_window_and_invert(tmp_path):
    x = np.linspace(0.0, 1.0, 256).reshape(16, 16)
    p = save_png(tmp_path / "b.png", x, bits=8, window=(0.0, 1.0))
    b = read_png(p)
    assert b.dtype == np.uint8 and b[0, 0] == 0 and b[-1, -1] == 255
    assert np.array_equal(b, to_uint(x, 8, (0.0, 1.0)))
    pi = save_png(tmp_path / "c.png", x, window=(0.0, 1.0), invert=True)
    assert np.array_equal(read_png(pi), 255 - b)
    # 16-bit float image: window maps to full range, reads back as computed
    p16 = save_png(tmp_path / "d.png", x, bits=16, window=(0.0, 1.0))
    assert np.array_equal(read_png(p16), to_uint(x, 16, (0.0, 1.0)))


def test_robust_window_ignores_outliers():
    x = np.random.default_rng(0).uniform(0, 1, (100, 100))
    x[0, 0] = 1e6
    lo, hi = robust_window(x)
    assert 0 <= lo < 0.02 and 0.98 < hi <= 1.0


def test_no_overwrite(tmp_path):
    x = np.zeros((4, 4))
    for fn, name in ((save_png, "a.png"), (save_npy, "a.npy"), (save_tiff, "a.tif")):
        fn(tmp_path / name, x)
        with pytest.raises(FileExistsError, match=name):
            fn(tmp_path / name, x)
        fn(tmp_path / name, x + 1, overwrite=True)
    assert np.array_equal(np.load(tmp_path / "a.npy"), x + 1)


def test_tiff_float32(tmp_path):
    import tifffile
    x = np.random.default_rng(1).normal(size=(5, 7))
    save_tiff(tmp_path / "x.tif", x)
    y = tifffile.imread(tmp_path / "x.tif")
    assert y.dtype == np.float32 and np.array_equal(y, x.astype(np.float32))


def test_projection_matrix(tmp_path):
    P = np.arange(12, dtype=float).reshape(3, 4) / 7
    p = save_projection_matrix(tmp_path / "P.txt", P)
    assert p.read_text().startswith("#")
    assert np.array_equal(load_projection_matrix(p), P)
    with pytest.raises(FileExistsError):
        save_projection_matrix(p, P)
    with pytest.raises(ValueError, match="3x4"):
        save_projection_matrix(tmp_path / "Q.txt", np.eye(3))


def test_bad_images(tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        save_png(tmp_path / "x.png", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="bits"):
        save_png(tmp_path / "y.png", np.zeros((2, 2)), bits=12)
