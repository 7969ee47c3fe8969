"""Tiled feature extraction end to end: stitching, resume, safety, preview and the CLI."""
from __future__ import annotations

import errno
import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from dinosaw_deploy.cli import main
from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.reader import open_image
from dinosaw_deploy.synthetic import synthetic_micrograph
from dinosaw_deploy.tiling.pipeline import extract_tiled, tile_input
from dinosaw_deploy.tiling.store import FeatureStore, partial_path

SMALL_TILES = {"tile": 112, "overlap": 2}  # 8x8-patch tiles keep the tiny engine fast


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def tall_tiff(tmp_path_factory):
    """1900 x 300 px: 135 patch rows, three store chunk rows, 22 x 4 tiles of 112 px."""
    path = tmp_path_factory.mktemp("img") / "tall.tif"
    tifffile.imwrite(path, synthetic_micrograph(1900, 300, seed=4)[0], tile=(128, 128), compression="zlib")
    return path


def test_stitched_features_are_each_tokens_own_tile(tiny_engine, tmp_path):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, synthetic_micrograph(500, 700, seed=1)[0], rowsperstrip=64, compression="lzw")
    fx = FeatureExtractor(tiny_engine)
    with open_image(path) as img:
        summary = extract_tiled(img, fx, tmp_path / "f.zarr", tile=196, overlap=4, window="central", dtype="float32",
                                batch=3)
        store = FeatureStore.open(tmp_path / "f.zarr")
        grid = store.grid
        assert store.shape == (96, 500 // 14, 700 // 14) and summary["tiles"] == grid.num_tiles > 4
        for t in grid.tiles():
            own = fx.run(tile_input(img.read_region(*grid.pixel_region(t)), fx, store.intensity_range)[None])[0]
            mask = grid.weights(t) == 1
            stitched = store.read(t.y0, t.x0, grid.tile_h, grid.tile_w)
            np.testing.assert_allclose(stitched[:, mask], own[:, mask], atol=1e-5)


def test_image_smaller_than_a_tile_matches_the_whole_image_path(tiny_engine, tmp_path):
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, synthetic_micrograph(300, 400, seed=2)[0].astype(np.uint16) * 200)
    zarr_out, npy_out = tmp_path / "s.zarr", tmp_path / "s.npy"
    result = invoke("features", path, "--engine", tiny_engine, "-o", zarr_out, "--dtype", "float32", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["tiles"] == 1 and summary["tile"] == [294, 392] and summary["intensity_range"] == [0, 65535]
    assert (tmp_path / "s.preview.png").is_file()
    assert invoke("features", path, "--engine", tiny_engine, "-o", npy_out).exit_code == 0
    np.testing.assert_allclose(FeatureStore.open(zarr_out).read(0, 0, 21, 28), np.load(npy_out), atol=1e-5)


def _interrupt_after(n):
    def progress(done, total):
        if done >= n:
            raise KeyboardInterrupt

    return progress


@pytest.mark.parametrize("window", ["central", "blend"])
def test_interrupted_run_resumes_bit_for_bit(tiny_engine, tall_tiff, tmp_path, window):
    fx = FeatureExtractor(tiny_engine)
    reference, resumed = tmp_path / "ref.zarr", tmp_path / "run.zarr"
    with open_image(tall_tiff) as img:
        extract_tiled(img, fx, reference, window=window, **SMALL_TILES)
        with pytest.raises(KeyboardInterrupt):
            extract_tiled(img, fx, resumed, window=window, progress=_interrupt_after(50), **SMALL_TILES)
        assert partial_path(resumed).is_dir() and not resumed.exists()
        with pytest.raises(DinosawError, match="unfinished"):
            FeatureStore.open(resumed)
        summary = extract_tiled(img, fx, resumed, window=window, **SMALL_TILES)
    assert 0 < summary["resumed_at_tile"] < summary["tiles"]
    assert summary["tiles_computed"] < summary["tiles"]
    a, b = FeatureStore.open(reference), FeatureStore.open(resumed)
    assert a.array.dtype == np.float16
    np.testing.assert_array_equal(a.array[:].view(np.uint16), b.array[:].view(np.uint16))
    assert a.attrs["progress"] == b.attrs["progress"] and not partial_path(resumed).exists()


def test_changed_settings_start_over(tiny_engine, tall_tiff, tmp_path):
    fx = FeatureExtractor(tiny_engine)
    out = tmp_path / "run.zarr"
    with open_image(tall_tiff) as img:
        with pytest.raises(KeyboardInterrupt):
            extract_tiled(img, fx, out, progress=_interrupt_after(50), **SMALL_TILES)
        summary = extract_tiled(img, fx, out, tile=112, overlap=3)
    assert summary["resumed_at_tile"] == 0 and summary["tiles_computed"] == summary["tiles"]


def test_full_disk_is_a_clear_error_and_the_run_resumes(tiny_engine, tall_tiff, tmp_path, monkeypatch):
    import zarr.storage._local as local

    real_put, calls = local._put, []

    def full_disk(path, value, *args, **kwargs):
        if "/c/" in str(path):
            calls.append(path)
            if len(calls) > 1:  # the first chunk row lands, the second hits the full disk
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(path, value, *args, **kwargs)

    fx = FeatureExtractor(tiny_engine)
    out = tmp_path / "run.zarr"
    with open_image(tall_tiff) as img:
        monkeypatch.setattr(local, "_put", full_disk)
        with pytest.raises(DinosawError, match="No space left.*resume"):
            extract_tiled(img, fx, out, **SMALL_TILES)
        monkeypatch.setattr(local, "_put", real_put)
        summary = extract_tiled(img, fx, out, **SMALL_TILES)
    assert summary["resumed_at_tile"] > 0 and FeatureStore.open(out).shape == (96, 135, 21)


def test_cli_overwrite_rules_and_errors(tiny_engine, tall_tiff, tmp_path):
    out = tmp_path / "f.zarr"
    args = ("features", tall_tiff, "--engine", tiny_engine, "-o", out, "--tile", "112", "--no-preview")
    assert invoke(*args).exit_code == 0
    stamp = (out / "zarr.json").read_text()
    again = invoke(*args)
    assert again.exit_code == 1 and again.output.startswith("Error: ") and "--overwrite" in again.output
    assert (out / "zarr.json").read_text() == stamp
    assert invoke(*args, "--overwrite", "--overlap", "0").exit_code == 0
    assert FeatureStore.open(out).grid.overlap == 0
    garbage = tmp_path / "bad.tif"
    garbage.write_bytes(b"II*\x00" + bytes(100))
    for bad_args, fragment in [
        (("features", garbage, "--engine", tiny_engine, "-o", tmp_path / "x.zarr"), "cannot read image"),
        (("features", tall_tiff, "--engine", tiny_engine, "-o", tmp_path / "x.h5"), ".zarr"),
        (("features", tall_tiff, "--engine", tiny_engine, "-o", tmp_path / "x.npy", "--tile", "112"), ".zarr outputs"),
        (("features", tall_tiff, "--engine", tiny_engine, "-o", tmp_path / "x.zarr", "--tile", "99"), "multiple of 14"),
    ]:
        result = invoke(*bad_args)
        assert result.exit_code == 1 and result.output.strip().splitlines() == [result.output.strip()], result.output
        assert result.output.startswith("Error: ") and fragment in result.output
    assert not (tmp_path / "x.zarr").exists() and not partial_path(tmp_path / "x.zarr").exists()


def test_vendor_pixel_size_reaches_every_output(tiny_engine, tmp_path):
    image = np.zeros((330, 300), np.uint8)
    image[:300] = synthetic_micrograph(300, 300, seed=5)[0]
    fei = "[Scan]\nPixelWidth=4e-09\nPixelHeight=4e-09\n[Image]\nResolutionY=300\n"
    path = tmp_path / "fei.tif"
    tifffile.imwrite(path, image, extratags=[(34682, "s", 0, fei, True)])
    zarr_out, npy_out = tmp_path / "f.zarr", tmp_path / "f.npy"
    for out in (zarr_out, npy_out):
        assert invoke("features", path, "--engine", tiny_engine, "-o", out, "--crop-databar").exit_code == 0
    store = FeatureStore.open(zarr_out)
    assert store.image["pixel_size"] == [4e-9, 4e-9] and store.image["databar_rows"] == 30
    assert store.shape[1:] == (300 // 14, 300 // 14)
    sidecar = json.loads((tmp_path / "f.npy.json").read_text())
    assert sidecar["image"]["pixel_size"] == [4e-9, 4e-9] and np.load(npy_out).shape == (96, 21, 21)


def test_preview_is_a_pca_picture(tiny_engine, tall_tiff, tmp_path):
    import imagecodecs

    from dinosaw_deploy.tiling.preview import render_preview

    out = tmp_path / "f.zarr"
    assert invoke("features", tall_tiff, "--engine", tiny_engine, "-o", out, "--tile", "112").exit_code == 0
    png = imagecodecs.imread(str(tmp_path / "f.preview.png"))
    assert png.shape == (135, 21, 3) and png.dtype == np.uint8 and png.std() > 10
    small = render_preview(FeatureStore.open(out), max_side=50)
    assert small.shape == (45, 7, 3)  # every 3rd token
