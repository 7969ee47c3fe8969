"""Preflight: a scan that declares an impossible size stops with one line before any work."""
from __future__ import annotations

import shutil
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.preflight import Planned, check_pixels, check_space, feature_store_bytes, label_bytes
from tests.test_hostile import assert_one_line_error, cli

SIDE = 40_000


@pytest.fixture(scope="module")
def tiled_bomb(tmp_path_factory) -> Path:
    """A ~2 MB tiled, deflate-compressed BigTIFF that declares 40 000 x 40 000 px (all zero tiles)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.tif"
    tile = np.zeros((1024, 1024), np.uint8)
    count = (-(-SIDE // 1024)) ** 2
    tifffile.imwrite(path, data=(tile for _ in range(count)), shape=(SIDE, SIDE), dtype="uint8", tile=(1024, 1024),
                     compression="zlib", bigtiff=True)
    return path


def test_sizes_are_counted_from_the_shape_alone():
    assert feature_store_bytes((518, 1036), 14, 384) == 37 * 74 * 384 * 2
    assert feature_store_bytes((518, 1036), 14, 384, "float32") == 37 * 74 * 384 * 4
    assert label_bytes((1600, 1600), 3) == int(1600 * 1600 * 3 * 4 / 3 / 16)


def test_pixel_limit_names_the_image_and_the_option():
    check_pixels((1000, 1000), 10**6, "a.tif")
    with pytest.raises(DinosawError, match=r"a.tif declares 1000x1001 .*--max-pixels"):
        check_pixels((1000, 1001), 10**6, "a.tif")


def test_space_is_added_up_per_filesystem(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(100, 0, 100))
    check_space([Planned(tmp_path / "a", 60, "a"), Planned(tmp_path / "sub" / "b", 40, "b")])
    with pytest.raises(DinosawError, match=r"need about 101 B \(a 60 B \+ b 41 B\) but only 100 B is free"):
        check_space([Planned(tmp_path / "a", 60, "a"), Planned(tmp_path / "sub" / "b", 41, "b")])


@pytest.mark.parametrize("command", ["features", "apply"])
def test_a_tiled_bomb_stops_in_a_second_with_one_line(tiny_engine, tiled_bomb, tmp_path, command):
    """Above --max-pixels: one line naming the declared size, before any tile is read."""
    if command == "features":
        args = ["features", tiled_bomb, "-o", tmp_path / "f.zarr", "--engine", tiny_engine]
    else:
        model = _classical_model(tmp_path)
        args = ["apply", tiled_bomb, "--model", model, "-o", tmp_path / "o.ome.tif"]
    start = time.perf_counter()
    result = cli(*args, "--max-pixels", 10**9)
    assert_one_line_error(result, f"declares {SIDE}x{SIDE}")
    assert time.perf_counter() - start < 30  # a subprocess start included; the check itself is milliseconds
    assert not list(tmp_path.glob("f.zarr*")) and not list(tmp_path.glob("o.*"))


def test_a_feature_store_that_cannot_fit_is_refused_with_both_figures(tiny_engine, tiled_bomb, tmp_path,
                                                                      monkeypatch):
    from dinosaw_deploy.engine.extractor import FeatureExtractor
    from dinosaw_deploy.tiling.run import extract_features

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(1 << 40, 0, 1 << 30))
    need = feature_store_bytes((SIDE, SIDE), 14, FeatureExtractor(tiny_engine).embed_dim) / 2**30
    with pytest.raises(DinosawError, match=rf"need about {need:.1f} GiB .* only 1.0 GiB is free"):
        extract_features(tiled_bomb, tmp_path / "f.zarr", FeatureExtractor(tiny_engine))
    assert not list(tmp_path.iterdir())


def _classical_model(tmp_path: Path) -> Path:
    from dinosaw_deploy.segment.classifier import ClassifierParams
    from dinosaw_deploy.segment.segmenter import Segmenter
    from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles

    image, truth = synthetic_micrograph(96, 96, seed=0)
    seg = Segmenter(classifier=ClassifierParams(rounds=2), threads=1).fit(image, synthetic_scribbles(truth, seed=0))
    return seg.save(tmp_path / "m.dsw")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only; skipped where it cannot be mounted), unmounted afterwards."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_disk_that_fills_during_the_run_is_one_line_naming_the_path(small_disk, tmp_path):
    """Label and probability images that pass the preflight's estimate but then fill the disk: one line with the
    path, the free space and the resume hint."""
    from dinosaw_deploy.synthetic import synthetic_scribbles, write_synthetic_tiff

    scan = write_synthetic_tiff(tmp_path / "scan.tif", 1400, 1400, seed=2)
    truth = tifffile.imread(write_synthetic_tiff(tmp_path / "truth.tif", 1400, 1400, seed=2, labels=True))
    tifffile.imwrite(tmp_path / "s.tif", synthetic_scribbles(truth, seed=0))
    (small_disk / "ballast").write_bytes(b"\0" * (1536 << 10))  # ~0.5 MiB left: enough for the estimate only
    result = cli("segment", scan, "--labels", tmp_path / "s.tif", "-o", small_disk / "o.ome.tif", "--no-vit",
                 "--probabilities", "--rounds", "5")
    assert_one_line_error(result, "no space left while writing")
    assert str(small_disk) in result.stderr and "rerun the same command to resume" in result.stderr


def test_a_disk_that_fills_under_zarrs_writer_threads_is_one_error(tiny_engine, small_disk, tmp_path, capfd):
    """The disk fills after the first tile row of a feature store (zarr writes chunks from its own threads):
    one DinosawError naming the store's filesystem and the resume hint, no thread traceback."""
    from dinosaw_deploy.engine.extractor import FeatureExtractor
    from dinosaw_deploy.synthetic import write_synthetic_tiff
    from dinosaw_deploy.tiling.run import extract_features

    scan = write_synthetic_tiff(tmp_path / "scan.tif", 1400, 1400, seed=2)

    def fill(done: int, total: int) -> None:
        if 0 < done < total and not (small_disk / "ballast").exists():
            with open(small_disk / "ballast", "wb") as handle:
                with pytest.raises(OSError):
                    while True:
                        handle.write(b"\0" * (64 << 10))
                        handle.flush()

    with pytest.raises(DinosawError, match="No space left on device|no space left while writing") as caught:
        extract_features(scan, small_disk / "f.zarr", FeatureExtractor(tiny_engine), tiled={"dtype": "float16"},
                         preview=False, progress=fill)
    assert str(small_disk) in str(caught.value) and "rerun the same command to resume" in str(caught.value)
    assert "Traceback" not in capfd.readouterr().err
