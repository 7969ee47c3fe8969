"""Every CLI failure is one clear line and a non-zero exit; the happy paths write what they say."""
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dinosaw_deploy import FeatureExtractor, __version__
from dinosaw_deploy.cli import main

from .conftest import TINY


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output
    return result


def assert_clean_failure(result, fragment, code=1):
    assert result.exit_code == code, result.output
    assert fragment in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_export_writes_and_reports(tmp_path):
    result = invoke("export", "--checkpoint", TINY / "weights_timm.pth", "--config", TINY / "config.json",
                    "-o", tmp_path, "--name", "t")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t.onnx").is_file() and (tmp_path / "t.onnx.json").is_file()
    assert "verified vs PyTorch" in result.output


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--checkpoint", "missing.pth"], "checkpoint not found"),
        (["--checkpoint", TINY / "weights_timm.pth"], "num_heads"),
        (["--checkpoint", TINY / "config.json", "--num-heads", "6"], "cannot read checkpoint"),
        (["--checkpoint", TINY / "weights_timm.pth", "--config", "missing.json"], "cannot read config"),
    ],
)
def test_export_failures(tmp_path, args, fragment):
    assert_clean_failure(invoke("export", "-o", tmp_path, *args), fragment)
    assert not list(tmp_path.glob("*.onnx"))


def test_export_bad_option():
    result = invoke("export", "--num-heads", "0")
    assert result.exit_code == 2 and "Invalid value" in result.output


def test_features_and_info(tiny_engine, tmp_path):
    import tifffile

    image = (np.random.default_rng(0).random((70, 90)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "img.tif", image)
    out = tmp_path / "f.npy"
    result = invoke("features", tmp_path / "img.tif", "-o", out, "--engine", tiny_engine)
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out), FeatureExtractor(tiny_engine)(image), atol=1e-6)
    again = invoke("features", tmp_path / "img.tif", "-o", out, "--engine", tiny_engine)
    assert_clean_failure(again, "--overwrite")
    info = invoke("info", tiny_engine)
    assert info.exit_code == 0 and json.loads(info.output)["architecture"]["embed_dim"] == 96


def write_garbage_tiff(path):
    path.write_bytes(b"II*\x00garbage")


def write_npy(shape):
    return lambda path: np.save(path, np.zeros(shape))


@pytest.mark.parametrize(
    "name, make_image, engine, fragment",
    [
        ("img.tif", None, None, "image not found"),
        ("img.tif", write_garbage_tiff, None, "cannot read image"),
        ("img.npy", write_npy((5, 5)), None, "smaller than one"),
        ("img.npy", write_npy((28, 28)), "config.json", "not a loadable ONNX"),
        ("img.npy", write_npy((28, 28)), "missing.onnx", "model not found"),
    ],
)
def test_features_failures(tiny_engine, tmp_path, name, make_image, engine, fragment):
    image = tmp_path / name
    if make_image:
        make_image(image)
    engine_path = {None: tiny_engine, "config.json": TINY / "config.json"}.get(engine, tmp_path / str(engine))
    result = invoke("features", image, "-o", tmp_path / "out.npy", "--engine", engine_path)
    assert_clean_failure(result, fragment)
    assert not (tmp_path / "out.npy").exists()


def test_features_never_overwrites_input(tiny_engine, tmp_path):
    image = tmp_path / "img.npy"
    np.save(image, np.zeros((28, 28)))
    before = image.read_bytes()
    assert_clean_failure(invoke("features", image, "-o", image, "--engine", tiny_engine, "--overwrite"), "inputs")
    assert image.read_bytes() == before


def test_info_failures(tmp_path):
    assert_clean_failure(invoke("info", tmp_path / "nothing.onnx"), "not found")
    junk = tmp_path / "x.plan"
    junk.write_bytes(b"x")
    assert_clean_failure(invoke("info", junk), "no manifest")
    bad_json = tmp_path / "m.json"
    bad_json.write_text("{}")
    assert_clean_failure(invoke("info", bad_json), "not a dinosaw-deploy manifest")


def test_backend_option_is_passed_through(tiny_engine, tmp_path):
    np.save(tmp_path / "img.npy", np.zeros((28, 28)))
    ok = invoke("features", tmp_path / "img.npy", "-o", tmp_path / "a.npy", "--engine", tiny_engine, "--backend", "cpu")
    assert ok.exit_code == 0, ok.output
    # a GPU backend that this machine lacks is refused, not silently replaced by the CPU
    forced = invoke("features", tmp_path / "img.npy", "-o", tmp_path / "b.npy", "--engine", tiny_engine,
                    "--backend", "ort-cuda")
    assert_clean_failure(forced, "ort-cuda")
    assert not (tmp_path / "b.npy").exists()


def test_whole_image_token_limit_uses_the_engines_patch_size(tmp_path, monkeypatch, tiny_engine):
    """A 300x300 image is 21x21 patches at 14 px but 150x150 at 2 px: the limit must use the engine's size."""
    import tifffile

    from dinosaw_deploy.engine import extractor as extractor_module

    real = extractor_module.FeatureExtractor

    class TwoPixelPatches(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.patch_size = 2

    monkeypatch.setattr(extractor_module, "FeatureExtractor", TwoPixelPatches)
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((300, 300), np.uint8))
    result = CliRunner().invoke(main, ["features", str(image), "-o", str(tmp_path / "f.npy"), "--engine", str(tiny_engine)])
    assert result.exit_code == 1 and "150x150 patches, too many for one pass" in result.output


def _renamed_input(src: Path, dst: Path) -> Path:
    import onnx

    model = onnx.load(str(src))
    old = model.graph.input[0].name
    model.graph.input[0].name = "pixels"
    for node in model.graph.node:
        node.input[:] = ["pixels" if name == old else name for name in node.input]
    onnx.save(model, str(dst))
    return dst


def test_info_refuses_what_the_runtime_refuses(tiny_engine, tmp_path):
    """Random bytes, a PNG renamed .onnx, an ONNX with a renamed input (alone, or beside a copied manifest):
    one line and a non-zero exit, as FeatureExtractor would refuse them."""
    import shutil

    from PIL import Image

    random_bytes = tmp_path / "random.onnx"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    png = tmp_path / "picture.onnx"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")
    renamed = _renamed_input(tiny_engine, tmp_path / "renamed.onnx")
    beside = _renamed_input(tiny_engine, tmp_path / "beside.onnx")
    shutil.copyfile(f"{tiny_engine}.json", f"{beside}.json")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    for artifact, fragment in ((random_bytes, "not a loadable ONNX"), (png, "not a loadable ONNX"),
                               (renamed, ""), (beside, "sha256"), (text, "not an engine")):
        assert_clean_failure(invoke("info", artifact), fragment)
    ok = invoke("info", f"{tiny_engine}.json")
    assert ok.exit_code == 0 and json.loads(ok.output)["architecture"]["embed_dim"] == 96


def test_progress_logs_an_eta_off_a_terminal_and_ignores_resumed_tiles(capsys, monkeypatch):
    from dinosaw_deploy.cli import _progress

    clock = iter([0.0, 10.0, 20.0, 30.0])
    monkeypatch.setattr(_progress, "monotonic", lambda: next(clock))
    with _progress.TileProgress(log_every=5) as progress:  # pytest's stderr is no terminal
        progress(50, 150)  # a resumed run: 50 tiles were done before, at t=0
        progress(60, 150)  # t=10: 10 tiles in 10 s, 90 left -> 90 s
        progress(60, 150)  # t=20: nothing new since the start's speed, still logged (interval passed)
        progress(150, 150)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "tiles 60/150 (40 %), 10 s elapsed, ETA 2 min"
    assert lines[1] == "tiles 60/150 (40 %), 20 s elapsed, ETA 3 min"
    assert lines[2] == "tiles 150/150 (100 %), 30 s elapsed, ETA 0 s" and len(lines) == 3
    assert _progress._duration(42) == "42 s" and _progress._duration(3 * 3600 + 5 * 60) == "3 h 05 min"


def test_the_library_leaves_the_process_environment_alone(monkeypatch):
    """Only the CLI (which owns its process) sets OpenMP's wait policy; training in the library does not."""
    import os

    from dinosaw_deploy import Segmenter
    from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    image, truth = synthetic_micrograph(160, 160, seed=4)
    Segmenter(tile=160, threads=1).fit(image, synthetic_scribbles(truth, fraction=0.02, seed=4))
    assert "OMP_WAIT_POLICY" not in os.environ
    invoke("info", "missing.onnx")
    assert os.environ.get("OMP_WAIT_POLICY") == "PASSIVE"
