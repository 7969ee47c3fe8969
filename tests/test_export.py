"""The ONNX contract: names, dtypes, dynamic shapes, opset, metadata, numbers vs the reference."""
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dinosaw_deploy.engine.bias import attention_bias  # noqa: E402
from dinosaw_deploy.engine.manifest import METADATA_KEY, read_manifest  # noqa: E402
from dinosaw_deploy.errors import DinosawError  # noqa: E402
from dinosaw_deploy.files import file_sha256  # noqa: E402

from .conftest import TINY, golden_cases, golden_sets  # noqa: E402


def ort_features(path, pixel_values, bias):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["features"], {"pixel_values": pixel_values, "attn_bias": np.array(bias)})[0]


def test_graph_contract(tiny_engine):
    graph = onnx.load(str(tiny_engine))
    inputs = {i.name: i for i in graph.graph.input}
    assert list(inputs) == ["pixel_values", "attn_bias"]
    assert [o.name for o in graph.graph.output] == ["features"]
    for value in list(graph.graph.input) + list(graph.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = {name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for name, v in inputs.items()}
    assert dims["pixel_values"] == ["batch", 3, "height", "width"]
    assert dims["attn_bias"] == [1, "bias_heads", "tokens", "tokens"]
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    assert 17 <= opset <= 20
    ops = {n.op_type for n in graph.graph.node}
    assert "LayerNormalization" in ops and "Softmax" in ops and "Attention" not in ops
    meta = json.loads({p.key: p.value for p in graph.metadata_props}[METADATA_KEY])
    assert meta["architecture"]["embed_dim"] == 96 and meta["bias"]["wrap"] is True
    assert meta["preprocessing"]["mean"] == [0.485, 0.456, 0.406]


def test_sidecar_manifest(tiny_engine):
    manifest = read_manifest(tiny_engine)
    assert manifest["onnx_sha256"] == file_sha256(tiny_engine)
    assert manifest["checkpoint"]["sha256"] == file_sha256(TINY / "weights_timm.pth")
    assert manifest["verification"]["passed"] and manifest["verification"]["max_abs_error"] <= 1e-4
    assert {"random_6x6", "random_4x7"} <= set(manifest["verification"]["cases"])
    assert manifest["package_version"] and manifest["precision"] == "fp32"


def test_onnx_matches_golden(tiny_engine):
    for name, case in golden_cases(TINY).items():
        h, w = (int(v) for v in case["grid"])
        got = ort_features(tiny_engine, case["input"], attention_bias(h, w))
        assert got.shape == case["feature_map"].shape, name
        assert np.abs(got - case["feature_map"]).max() <= 1e-4, name


def test_per_head_bias_input(tiny_engine):
    """attn_bias may carry one matrix per head; equal heads give the broadcast result."""
    case = golden_cases(TINY)["img56x84"]
    per_head = np.repeat(np.array(attention_bias(4, 6)), 6, axis=1)
    assert np.abs(ort_features(tiny_engine, case["input"], per_head) - case["feature_map"]).max() <= 1e-4


@pytest.mark.parametrize("root", golden_sets())
def test_export_matches_golden(root, tmp_path):
    from dinosaw_deploy.export.build import run_export

    result = run_export(root / "weights.pth" if (root / "weights.pth").exists() else root / "weights_timm.pth",
                        out_dir=tmp_path, name="m", config_path=root / "config.json")
    (path,) = result.artifacts
    for name, case in golden_cases(root).items():
        h, w = (int(v) for v in case["grid"])
        assert np.abs(ort_features(path, case["input"], attention_bias(h, w)) - case["feature_map"]).max() <= 1e-4


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    from dinosaw_deploy.export import verify
    from dinosaw_deploy.export.build import run_export

    monkeypatch.setitem(verify.CRITERIA, "fp32", verify.Criterion("max_abs_error", 0.0))
    with pytest.raises(DinosawError, match="disagrees with PyTorch"):
        run_export(TINY / "weights_timm.pth", out_dir=tmp_path, name="m", config_path=TINY / "config.json")
    assert list(tmp_path.iterdir()) == []


def test_fp16_graph(tiny_engine):
    path = tiny_engine.with_name("tiny.fp16.onnx")
    graph = onnx.load(str(path))
    assert [o.type.tensor_type.elem_type for o in graph.graph.output] == [onnx.TensorProto.FLOAT]
    # the bias input is cast to float16 inside the graph, before it meets the logits
    casts = [n for n in graph.graph.node if n.op_type == "Cast" and "attn_bias" in n.input]
    assert casts and all(a.i == onnx.TensorProto.FLOAT16 for n in casts for a in n.attribute if a.name == "to")
    weights = [i for i in graph.graph.initializer if len(i.dims) == 2]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)
    manifest = read_manifest(path)
    assert manifest["precision"] == "fp16" and manifest["verification"]["min_token_cosine"] >= 0.999


def test_fp16_cosine_including_flat(tiny_engine):
    from dinosaw_deploy.export.verify import token_cosine

    path = tiny_engine.with_name("tiny.fp16.onnx")
    for name, case in golden_cases(TINY).items():
        h, w = (int(v) for v in case["grid"])
        got = ort_features(path, case["input"], attention_bias(h, w))
        assert token_cosine(got, case["feature_map"]).min() >= 0.999, name
    flat = np.full((1, 3, 70, 84), -0.5, np.float32)
    fp32 = ort_features(tiny_engine, flat, attention_bias(5, 6))
    assert token_cosine(ort_features(path, flat, attention_bias(5, 6)), fp32).min() >= 0.999


def test_one_verification_rule_for_every_export_step():
    """export/verify.py: one table of criteria by precision, used by the ONNX and the TensorRT checks."""
    from dinosaw_deploy.export import onnx_export, tensorrt, verify

    assert onnx_export.verify_outputs is tensorrt.verify_outputs is verify.verify_outputs
    assert {k: (c.metric, c.bound) for k, c in verify.CRITERIA.items()} == {
        "fp32": ("max_abs_error", 1e-4), "fp16": ("min_token_cosine", 0.999), "fp16-flag": ("min_token_cosine", 0.999),
        "int8": ("min_token_cosine", 0.99)}
    assert verify.PLAN_CRITERIA["fp32"].bound == 1e-3 and verify.PLAN_CRITERIA["fp16"] == verify.CRITERIA["fp16"]
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(2, 8, 3, 4)).astype(np.float32)
    close, scaled = reference + 5e-5, reference * 3  # scaling keeps every token's direction
    cases = {"close": verify.compare(reference, close, "close"), "scaled": verify.compare(reference, scaled, "s")}
    assert verify.verify_outputs({"close": cases["close"]}, "fp32").passed
    fp32 = verify.verify_outputs(cases, "fp32")
    assert not fp32.passed and fp32.max_abs_error == pytest.approx(2 * np.abs(reference).max(), rel=1e-6)
    with pytest.raises(DinosawError, match=r"m.onnx disagrees with PyTorch .*needs max abs error <= 0.0001\)"):
        fp32.require("m.onnx", "PyTorch")
    fp16 = verify.verify_outputs(cases, "fp16")
    assert fp16.passed and fp16.min_token_cosine == pytest.approx(1.0)
    report = fp16.report()
    assert report["criterion"] == "min per-token cosine >= 0.999" and report["passed"] is True
    assert set(report) == {"cases", "max_abs_error", "min_token_cosine", "criterion", "passed"}
    with pytest.raises(DinosawError, match="no verification criterion for precision 'int4'"):
        verify.verify_outputs(cases, "int4")
    assert verify.verify_outputs(cases, "int8").passed  # direction kept: int8's cosine row passes
    with pytest.raises(DinosawError, match=r"bad: output shape \(2, 8, 3, 3\) != reference"):
        verify.compare(reference, reference[..., :3], "bad")
    orthogonal = np.stack([np.eye(8, dtype=np.float32)[:, :1], np.eye(8, dtype=np.float32)[:, 1:2]])[..., None]
    assert verify.token_cosine(orthogonal[:1], orthogonal[1:]).max() == 0.0
