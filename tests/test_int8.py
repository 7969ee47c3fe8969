"""`export --int8`: a dynamically quantised CPU engine, verified against PyTorch, run by the runtime."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from dinosaw_deploy.cli import main  # noqa: E402
from dinosaw_deploy.engine.extractor import FeatureExtractor  # noqa: E402
from dinosaw_deploy.engine.manifest import read_manifest  # noqa: E402
from dinosaw_deploy.errors import DinosawError  # noqa: E402
from dinosaw_deploy.export import verify  # noqa: E402
from dinosaw_deploy.export.build import run_export  # noqa: E402
from dinosaw_deploy.export.verify import token_cosine  # noqa: E402
from dinosaw_deploy.synthetic import synthetic_micrograph  # noqa: E402

from .conftest import TINY  # noqa: E402


@pytest.fixture(scope="module")
def int8_engine(tmp_path_factory):
    out = tmp_path_factory.mktemp("int8")
    result = run_export(TINY / "weights_timm.pth", out_dir=out, name="tiny", int8=True,
                        config_path=TINY / "config.json")
    assert [p.name for p in result.artifacts] == ["tiny.onnx", "tiny.int8.onnx"]
    return out / "tiny.int8.onnx"


def test_int8_engine_is_quantised_verified_and_recorded(int8_engine):
    ops = {n.op_type for n in onnx.load(str(int8_engine)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    manifest = read_manifest(int8_engine)
    assert manifest["precision"] == "int8" and manifest["artifact"] == "tiny.int8.onnx"
    report = manifest["verification"]
    assert report["passed"] and report["min_token_cosine"] >= 0.99
    assert {"random_6x6", "random_4x7", "flat_6x6"} <= set(report["cases"])
    assert report["quantization"]["method"] == "onnxruntime dynamic"
    assert int8_engine.stat().st_size < int8_engine.with_name("tiny.onnx").stat().st_size


def test_the_runtime_runs_it_on_the_cpu(int8_engine):
    fx8 = FeatureExtractor(int8_engine, backend="cpu")
    assert fx8.manifest["precision"] == "int8"  # the embedded manifest says so too, without the sidecar
    int8_engine.with_name("tiny.int8.onnx.json").rename(int8_engine.with_name("moved.json"))
    try:
        assert FeatureExtractor(int8_engine, backend="cpu").manifest["precision"] == "int8"
    finally:
        int8_engine.with_name("moved.json").rename(int8_engine.with_name("tiny.int8.onnx.json"))
    image = synthetic_micrograph(140, 182, seed=2)[0]
    fp32, int8 = FeatureExtractor(int8_engine.with_name("tiny.onnx"))(image), fx8(image)
    assert int8.shape == fp32.shape == (96, 10, 13)
    cosine = token_cosine(int8[None], fp32[None])
    assert cosine.min() >= 0.99 and not np.array_equal(int8, fp32)


def test_export_refuses_an_int8_engine_below_the_bar(tmp_path, monkeypatch):
    monkeypatch.setitem(verify.CRITERIA, "int8", verify.Criterion("min_token_cosine", 1.0001))  # unreachable
    with pytest.raises(DinosawError, match="m.int8.onnx disagrees with PyTorch .* not keeping it"):
        run_export(TINY / "weights_timm.pth", out_dir=tmp_path, name="m", int8=True, config_path=TINY / "config.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]


def test_cli_export_int8_and_info(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--checkpoint", str(TINY / "weights_timm.pth"), "--config",
                                  str(TINY / "config.json"), "-o", str(tmp_path), "--name", "t", "--int8"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "t.int8.onnx" in result.output
    info = runner.invoke(main, ["info", str(tmp_path / "t.int8.onnx")])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["precision"] == "int8"
    bad = runner.invoke(main, ["export", "--from-onnx", str(tmp_path / "t.onnx"), "--int8"])
    assert bad.exit_code != 0 and bad.output.startswith("Error: ") and "--int8" in bad.output
