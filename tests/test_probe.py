"""Positional-bias probe (method.md §4), its report/figure, and the roll-equivariance check."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from dinosaw_deploy.cli import main
from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.probe.positional import RAMPS, probe_features, ramp_targets, summarize
from dinosaw_deploy.probe.roll import roll_check

from .conftest import TINY


def noise(c, h, w, seed=0):
    return np.random.default_rng(seed).normal(size=(c, h, w)).astype(np.float32)


def ramps(h, w):
    rows, cols = np.mgrid[0:h, 0:w]
    return cols / (w - 1), rows / (h - 1)


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def test_matches_scikit_learn():
    """An independent StandardScaler + Ridge(1) + r2_score on the same sampled tokens."""
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    c, h, w = 12, 23, 31
    feats = noise(c, h, w)
    u, v = ramps(h, w)
    feats[3] += u + 0.3 * v
    feats[5] = 2.0  # a constant channel: StandardScaler keeps scale 1
    result = probe_features(feats, rng=np.random.default_rng(7), repeats=3, block_tokens=50)

    x = feats.reshape(c, -1).T.astype(np.float64)
    targets = ramp_targets(u.ravel(), v.ravel())
    rng = np.random.default_rng(7)
    for r in range(3):
        picks = rng.choice(h * w, size=h * w // 36, replace=False)
        cases = [(list(range(c)), result.r2[r])] + [([ch], result.channel_r2[r, ch]) for ch in range(c)]
        for cols, expected in cases:
            scaler = preprocessing.StandardScaler().fit(x[picks][:, cols])
            model = Ridge(alpha=1.0).fit(scaler.transform(x[picks][:, cols]), targets[picks])
            pred = model.predict(scaler.transform(x[:, cols]))
            r2 = [r2_score(targets[:, j], pred[:, j]) for j in range(len(RAMPS))]
            np.testing.assert_allclose(expected, r2, atol=1e-9)


def test_injected_ramp_is_found():
    c, h, w = 16, 60, 60
    feats = noise(c, h, w, seed=1)
    u, v = ramps(h, w)
    feats[11] = 3 * u + 0.05 * noise(1, h, w, seed=2)[0]
    summary = summarize([probe_features(feats, rng=np.random.default_rng(0))])
    assert summary["r2"]["x"]["mean"] > 0.9
    assert summary["channels"]["ranking"][0] == 11
    assert summary["channels"]["r2"]["x"][11] > 0.99

    feats[4] = 3 * v  # and an up-down ramp: the paper's x/y average is then ~1
    summary = summarize([probe_features(feats, rng=np.random.default_rng(0))])
    assert summary["r2_xy"]["mean"] > 0.9
    assert set(summary["channels"]["ranking"][:2]) == {4, 11}


def test_noise_has_no_positional_signal():
    results = [probe_features(noise(32, 37, 37, seed=s), rng=np.random.default_rng(s)) for s in range(2)]
    summary = summarize(results)
    assert summary["r2_xy"]["mean"] < 0.05  # usually well below 0: the ridge overfits the noise
    assert max(summary["channels"]["r2_xy"]) < 0.05
    assert len(summary["per_image_xy"]) == 2


def test_chunked_store_gives_the_same_numbers():
    zarr = pytest.importorskip("zarr")
    feats = noise(8, 29, 41, seed=3)
    feats[2] += ramps(29, 41)[1]
    store = zarr.create_array(store=zarr.storage.MemoryStore(), shape=feats.shape, chunks=(8, 6, 7), dtype="f4")
    store[:] = feats
    a = probe_features(feats, rng=np.random.default_rng(5), repeats=2)
    b = probe_features(store, rng=np.random.default_rng(5), repeats=2, block_tokens=60)
    np.testing.assert_allclose(a.r2, b.r2, atol=1e-10)
    np.testing.assert_allclose(a.channel_r2, b.channel_r2, atol=1e-10)


@pytest.mark.parametrize("shape", [(4, 5, 5), (37, 37), (3, 1, 200)])
def test_too_small_or_wrong_shape(shape):
    with pytest.raises(DinosawError):
        probe_features(np.zeros(shape, np.float32), rng=np.random.default_rng(0))


@pytest.fixture(scope="module")
def nowrap_engine(tmp_path_factory):
    """The tiny golden weights exported with a non-wrapping ALiBi bias."""
    pytest.importorskip("torch")
    from dinosaw_deploy.export.build import run_export

    out = tmp_path_factory.mktemp("nowrap")
    config = json.loads((TINY / "config.json").read_text())
    config["alibi"]["wrap"] = False
    (out / "config.json").write_text(json.dumps(config))
    run_export(TINY / "weights_timm.pth", out_dir=out, name="nowrap", config_path=out / "config.json")
    return out / "nowrap.onnx"


def test_roll_equivariance_holds_with_wrap_and_fails_without(tiny_engine, nowrap_engine):
    image = np.random.default_rng(0).random((98, 126))  # 7 x 9 grid
    for engine in (tiny_engine, tiny_engine.with_name("tiny.fp16.onnx")):
        check = roll_check(FeatureExtractor(engine), image)
        assert check["shifts"] == [[1, 0], [0, 1], [3, 4]]
        assert check["max_deviation"] < 1e-4 * check["feature_max_abs"]
    check = roll_check(FeatureExtractor(nowrap_engine), image)
    assert check["max_deviation"] > 1e-3 * check["feature_max_abs"]
    with pytest.raises(DinosawError, match="whole turn"):
        roll_check(FeatureExtractor(tiny_engine), image, [(0, 0), (7, 9)])  # no shift at all


def test_cli_probe_features_writes_report_and_figure(tmp_path):
    pytest.importorskip("matplotlib")
    feats = noise(10, 40, 50, seed=4)
    feats[7] += 2 * ramps(40, 50)[0]
    np.save(tmp_path / "f.npy", feats)
    out = tmp_path / "probe.json"
    result = invoke("probe", tmp_path / "f.npy", "-o", out, "--seed", "3", "--repeats", "4")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    expected = probe_features(feats, rng=np.random.default_rng(3), repeats=4)
    assert report["r2_xy"]["mean"] == pytest.approx(expected.xy.mean())
    assert report["channels"]["top"][0]["channel"] == 7
    assert (tmp_path / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = invoke("probe", tmp_path / "f.npy", "-o", out)
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_cli_roll_reports_failure_cleanly(tmp_path, nowrap_engine):
    out = tmp_path / "roll.json"
    result = invoke("probe", "--roll", "--engine", nowrap_engine, "-o", out, "--no-figure")
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith("Error: roll check failed")
    assert json.loads(out.read_text())["roll"]["passed"] is False


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "give IMAGE or FEATURES"),
        (["{tmp}/missing.npy"], "input not found"),
        (["{tmp}/flat.npy"], "features must be (C, h, w)"),
        (["{tmp}/flat.npy", "--tiles"], "--tiles needs a feature store"),
    ],
)
def test_cli_failures(tmp_path, args, fragment):
    np.save(tmp_path / "flat.npy", np.zeros((40, 40), np.float32))
    args = [a.format(tmp=tmp_path) for a in args]
    result = invoke("probe", *args, "-o", tmp_path / "r.json", "--no-figure")
    assert result.exit_code == 1 and fragment in result.output, result.output
    assert not (tmp_path / "r.json").exists()


def stitched_local_ramps(grid):
    """Tile-local x and y (0..1 inside the engine tile) of every stitched token, built by merging
    per-tile ramps with the grid's own weights."""
    local = np.zeros((2, grid.grid_h, grid.grid_w))
    ramp_y, ramp_x = np.mgrid[0 : grid.tile_h, 0 : grid.tile_w]
    for tile in grid.tiles():
        weights = grid.weights(tile)
        box = np.s_[tile.y0 : tile.y0 + grid.tile_h, tile.x0 : tile.x0 + grid.tile_w]
        local[0][box] += weights * ramp_x / (grid.tile_w - 1)
        local[1][box] += weights * ramp_y / (grid.tile_h - 1)
    return local


def test_tile_local_ramps_find_a_per_tile_signal():
    from dinosaw_deploy.probe.positional import tile_local_positions
    from dinosaw_deploy.tiling.grid import TileGrid

    grid = TileGrid.for_image(1400, 1200, tile=518, overlap=4, window="central")  # 100 x 85 patches, 3 x 3 tiles
    local_x, local_y = stitched_local_ramps(grid)
    feats = noise(8, grid.grid_h, grid.grid_w, seed=6)
    feats[2] = 3 * local_x
    feats[6] = 3 * local_y
    tiled = probe_features(feats, rng=np.random.default_rng(0), positions=tile_local_positions(grid))
    plain = probe_features(feats, rng=np.random.default_rng(0))
    assert tiled.xy.mean() > 0.99 and plain.xy.mean() < 0.5  # the global ramps see it only in part


def test_cli_tiles_on_stitched_alibi_features(tiny_engine, tmp_path):
    """Default tiling of a homogeneous micrograph must not create a per-tile positional signal."""
    import tifffile

    from dinosaw_deploy.image.reader import open_image
    from dinosaw_deploy.synthetic import synthetic_micrograph
    from dinosaw_deploy.tiling.pipeline import extract_tiled

    tifffile.imwrite(tmp_path / "scan.tif", synthetic_micrograph(1100, 1100, seed=5)[0])
    with open_image(tmp_path / "scan.tif") as reader:
        extract_tiled(reader, FeatureExtractor(tiny_engine), tmp_path / "feats.zarr")
    out = tmp_path / "tiles.json"
    result = invoke("probe", tmp_path / "feats.zarr", "--tiles", "-o", out, "--no-figure")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["protocol"]["positions"].startswith("tile-local")
    assert report["r2_xy"]["mean"] <= 0.05
    store = report["inputs"][0]
    assert store["grid"]["cuts_x"] and np.isfinite(store["seam_ratio"])


def test_cli_refuses_images_too_large_for_one_pass(tiny_engine, tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "big.tif", np.zeros((1900, 1900), np.uint8))  # 135 x 135 patches
    result = invoke("probe", tmp_path / "big.tif", "--engine", tiny_engine, "-o", tmp_path / "r.json", "--no-figure")
    assert result.exit_code == 1 and "too large for one engine pass" in result.output
    assert not (tmp_path / "r.json").exists()
