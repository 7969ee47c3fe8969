"""OME-Zarr output: NGFF metadata and pyramid read back with ome-zarr's own reader; segment/apply
write it without a cluster, with the same labels as the OME-TIFF."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from dinosaw_deploy.cli import main
from dinosaw_deploy.image.ome_zarr import build_levels, create_ome_zarr, level_shapes, open_level
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles

FEI = "[Scan]\nPixelWidth=2.5e-09\nPixelHeight=2.5e-09\n"


def read_back(path):
    """(levels as numpy, multiscale metadata) through ome_zarr.io.parse_url + ome_zarr.reader.Reader."""
    pytest.importorskip("ome_zarr")
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(path)))())
    assert nodes, f"ome-zarr found no image in {path}"
    return [np.asarray(level) for level in nodes[0].data], nodes[0].metadata


@pytest.mark.parametrize("channels", [None, 3])
def test_pyramid_and_pixel_size_read_back_by_ome_zarr(tmp_path, channels):
    rng = np.random.default_rng(0)
    shape = (1100, 700) if channels is None else (channels, 1100, 700)
    data = rng.integers(0, 255, shape, dtype=np.uint8)
    path = create_ome_zarr(tmp_path / "x.ome.zarr", shape, chunk=256, pixel_size=(2.5e-9, 4e-9),
                           channel_names=None if channels is None else ["a", "b", "c"], name="x")
    open_level(path)[:] = data
    build_levels(path)
    levels, meta = read_back(path)
    expected = [(1100, 700), (550, 350), (275, 175), (138, 88)]
    assert [lv.shape[-2:] for lv in levels] == level_shapes(1100, 700, 256) == expected
    for k, level in enumerate(levels):
        np.testing.assert_array_equal(level, data[..., :: 2**k, :: 2**k])
    scales = [t[0]["scale"][-2:] for t in meta["coordinateTransformations"]]
    np.testing.assert_allclose(scales, [[0.0025 * 2**k, 0.004 * 2**k] for k in range(4)])
    assert [a["name"] for a in meta["axes"]] == (["y", "x"] if channels is None else ["c", "y", "x"])
    assert meta["axes"][-1]["unit"] == "micrometer"


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    root = tmp_path_factory.mktemp("omezarr")
    image, truth = synthetic_micrograph(300, 700, seed=5)
    tifffile.imwrite(root / "scan.tif", image, extratags=[(34682, "s", 0, FEI, True)])
    tifffile.imwrite(root / "scribbles.tif", synthetic_scribbles(truth, fraction=0.02, seed=5))
    return root


def test_segment_and_apply_write_ome_zarr_without_a_cluster(scan, tmp_path):
    fast = ["--no-vit", "--rounds", "5", "--threads", "2", "--modal", "1", "--probabilities"]
    runner = CliRunner()
    tif, zarr_out = tmp_path / "ref.ome.tif", tmp_path / "seg.ome.zarr"
    for out, extra in ((tif, ["--save-model", tmp_path / "seg.dsw"]), (zarr_out, [])):
        result = runner.invoke(main, [str(a) for a in ("segment", scan / "scan.tif", "--labels",
                                                       scan / "scribbles.tif", "-o", out, *fast, *extra)])
        assert result.exit_code == 0, result.output
    reference = tifffile.imread(tif)
    fractions = np.bincount(reference.ravel(), minlength=4)[1:] / reference.size
    # the fractions are counted before the OME-Zarr is moved to its final name (not from a vanished store)
    assert f"1 (class 1) {100 * fractions[0]:.2f} %, 2 (class 2) {100 * fractions[1]:.2f} %" in result.output
    levels, meta = read_back(zarr_out)
    np.testing.assert_array_equal(levels[0], reference)
    assert meta["coordinateTransformations"][0][0]["scale"] == [0.0025, 0.0025]
    probs, _ = read_back(tmp_path / "seg.probabilities.ome.zarr")
    np.testing.assert_array_equal(probs[0], tifffile.imread(tmp_path / "ref.probabilities.ome.tif"))
    assert not (tmp_path / "seg.ome.zarr.work").exists()

    applied = tmp_path / "applied.ome.zarr"
    result = runner.invoke(main, [str(a) for a in ("apply", scan / "scan.tif", "--model", tmp_path / "seg.dsw",
                                                   "-o", applied, "--modal", "1", "--threads", "2")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_back(applied)[0][0], reference)
    result = runner.invoke(main, [str(a) for a in ("apply", scan / "scan.tif", "--model", tmp_path / "seg.dsw",
                                                   "-o", tmp_path / "x.zarr")])
    assert result.exit_code != 0 and ".ome.zarr" in result.output
