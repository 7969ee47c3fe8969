"""Backend selection and the ONNX Runtime backends (CPU here; CUDA/TensorRT providers by their options)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dinosaw_deploy import FeatureExtractor
from dinosaw_deploy.engine.backends import choose_backend
from dinosaw_deploy.engine.backends.ort import OrtBackend, provider_list
from dinosaw_deploy.engine.backends.profile import TileProfile
from dinosaw_deploy.errors import DinosawError

ALL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
CPU = ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    "model, requested, available, providers, expected",
    [
        ("m.plan", "auto", CPU, None, "tensorrt"),
        ("m.plan", "tensorrt", ALL, None, "tensorrt"),
        ("m.onnx", "auto", ALL, None, "ort-tensorrt"),
        ("m.onnx", "auto", CUDA, None, "ort-cuda"),
        ("m.onnx", "auto", CPU, None, "cpu"),
        ("m.onnx", "cpu", ALL, None, "cpu"),
        ("m.onnx", "ort-cuda", ALL, None, "ort-cuda"),
        ("m.onnx", "auto", ALL, ["CUDAExecutionProvider", "CPUExecutionProvider"], "ort-cuda"),
        ("m.onnx", "cpu", ALL, ["CPUExecutionProvider"], "cpu"),
    ],
)
def test_choose_backend(model, requested, available, providers, expected):
    assert choose_backend(model, requested, available_providers=available, providers=providers) == expected


@pytest.mark.parametrize(
    "model, requested, available, providers, match",
    [
        ("m.plan", "cpu", ALL, None, "only backend 'tensorrt' runs it"),
        ("m.plan", "auto", ALL, ["CPUExecutionProvider"], "only backend 'tensorrt' runs it"),
        ("m.onnx", "tensorrt", ALL, None, "runs .plan files.*export --from-onnx m.onnx"),
        ("m.onnx", "ort-cuda", CPU, None, r"needs ONNX Runtime's CUDAExecutionProvider.*onnxruntime-gpu"),
        ("m.onnx", "ort-tensorrt", CUDA, None, "TensorrtExecutionProvider, not available"),
        ("m.onnx", "auto", CPU, ["CUDAExecutionProvider"], "CUDAExecutionProvider not available here"),
        ("m.onnx", "cpu", ALL, ["CUDAExecutionProvider"], "do not match backend 'cpu'"),
        ("m.onnx", "gpu", ALL, None, "unknown backend 'gpu'"),
    ],
)
def test_choose_backend_refuses_clearly(model, requested, available, providers, match):
    with pytest.raises(DinosawError, match=match):
        choose_backend(model, requested, available_providers=available, providers=providers)


def test_auto_picks_and_logs(tiny_engine, caplog):
    with caplog.at_level(logging.INFO, logger="dinosaw_deploy"):
        fx = FeatureExtractor(tiny_engine)
    expected = choose_backend(tiny_engine, available_providers=ort.get_available_providers())
    assert fx.backend.name == expected and fx.plan is None
    assert any(f"backend {expected} for tiny.onnx" in r.getMessage() and "[auto]" in r.getMessage()
               for r in caplog.records)
    image = np.random.default_rng(0).random((42, 70), dtype=np.float32)
    np.testing.assert_allclose(fx(image), FeatureExtractor(tiny_engine, backend="cpu")(image), atol=1e-5)


def test_forced_gpu_backend_without_gpu_is_an_error(tiny_engine):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    with pytest.raises(DinosawError, match="ort-cuda"):
        FeatureExtractor(tiny_engine, backend="ort-cuda")
    with pytest.raises(DinosawError, match="not available here"):
        FeatureExtractor(tiny_engine, providers=["CUDAExecutionProvider"])
    with pytest.raises(DinosawError, match="runs .plan files"):
        FeatureExtractor(tiny_engine, backend="tensorrt")


def test_silent_cpu_fallback_is_refused(tiny_engine, tmp_path, monkeypatch, caplog):
    """ONNX Runtime falls back to the CPU when a GPU provider fails to start: a forced backend
    refuses that; ``auto`` walks down the chain and says so."""
    tiny_engine = Path(shutil.copy(tiny_engine, tmp_path / "tiny.onnx"))  # the provider cache goes beside it
    real_session = ort.InferenceSession
    requested = {}

    def falling_back(path, options=None, providers=None):
        requested["providers"] = providers
        return real_session(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ALL)
    monkeypatch.setattr(ort, "InferenceSession", falling_back)
    with pytest.raises(DinosawError, match="could not start CUDAExecutionProvider.*backend 'cpu' knowingly"):
        FeatureExtractor(tiny_engine, backend="ort-cuda")
    with pytest.raises(DinosawError, match="could not start TensorrtExecutionProvider"):
        FeatureExtractor(tiny_engine, backend="ort-tensorrt")
    name, options = requested["providers"][0]
    assert name == "TensorrtExecutionProvider" and options["trt_engine_cache_enable"]
    assert (tiny_engine.parent / "ort_trt_cache").is_dir()
    with caplog.at_level(logging.INFO, logger="dinosaw_deploy"):
        fx = FeatureExtractor(tiny_engine)  # auto: ort-tensorrt, then ort-cuda fail to start -> cpu
    assert fx.backend.name == "cpu"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "TensorrtExecutionProvider" in warnings[0] and "CUDAExecutionProvider" in warnings[1]
    assert any("backend cpu for tiny.onnx" in r.getMessage() for r in caplog.records)


def test_tensorrt_provider_options(tmp_path):
    profile = TileProfile(opt_tile=518, min_tile=224, max_tile=518, max_batch=32, opt_batch=32)
    (name, options), *rest = provider_list("ort-tensorrt", tmp_path, profile)
    assert name == "TensorrtExecutionProvider" and rest == provider_list("ort-cuda", tmp_path)
    assert options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"]
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(tmp_path)
    assert options["trt_fp16_enable"] is False  # precision comes from the ONNX
    assert options["trt_profile_opt_shapes"] == "pixel_values:32x3x518x518,attn_bias:1x1x1374x1374"
    assert "trt_profile_min_shapes" not in provider_list("ort-tensorrt", tmp_path)[0][1]
    assert provider_list("cpu", tmp_path) == ["CPUExecutionProvider"]


def test_ort_backend_with_profile_checks_shapes(tiny_engine):
    profile = TileProfile(opt_tile=56, min_tile=42, max_tile=70, max_batch=2, opt_batch=2)
    backend = OrtBackend(tiny_engine, "cpu", profile=profile)
    fx = FeatureExtractor(tiny_engine, backend=backend, batch_size=5)
    assert fx.batch_size == 2 and fx.providers == ["CPUExecutionProvider"]
    pixels = np.random.default_rng(1).normal(size=(3, 3, 56, 70)).astype(np.float32)
    np.testing.assert_allclose(fx.run(pixels), FeatureExtractor(tiny_engine, backend="cpu").run(pixels), atol=1e-5)
    with pytest.raises(DinosawError, match="outside the engine's profile"):
        fx.run(np.zeros((1, 3, 84, 56), np.float32))


@pytest.mark.parametrize("requested, expected", [("auto", "cpu"), ("ort-cuda", "ort-cuda"), ("cpu", "cpu")])
def test_auto_runs_int8_engines_on_the_cpu_even_on_a_gpu_host(requested, expected, caplog):
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level("INFO", logger="dinosaw_deploy.engine.backends"):
        got = choose_backend("m.int8.onnx", requested, available_providers=gpu, precision="int8")
    assert got == expected
    assert ("int8 engine" in caplog.text) == (requested == "auto")
    assert choose_backend("m.onnx", "auto", available_providers=gpu, precision="fp32") == "ort-tensorrt"


def test_precision_comes_from_the_sidecar(tiny_engine, tmp_path):
    from dinosaw_deploy.engine.backends import _precision

    assert _precision(tiny_engine) == "fp32"
    assert _precision(tmp_path / "no_manifest.onnx") is None
