"""TensorRT plans: profiles, manifests and stale-engine decisions, the builder and the native
runtime (on CPU through fakes of ``tensorrt`` and ``cuda.bindings.runtime``), and fp16 numerics.

The fakes below implement only the documented calls our code makes. The fake "GPU" keeps device
and pinned allocations apart and checks every copy and tensor address against them; the fake
engine enforces its optimisation profile and computes with ONNX Runtime on the source ONNX.
Tests marked ``gpu`` need a real GPU with TensorRT and are skipped elsewhere.
"""
from __future__ import annotations

import ctypes
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dinosaw_deploy import FeatureExtractor, __version__
from dinosaw_deploy.engine.backends import cuda as cuda_module
from dinosaw_deploy.engine.backends import tensorrt as trt_backend_module
from dinosaw_deploy.engine.backends.plan_manifest import MachineInfo, StaleEngineError, check_plan, plan_path_for
from dinosaw_deploy.engine.backends.profile import TileProfile, make_profile
from dinosaw_deploy.engine.backends.tensorrt import TensorRTBackend
from dinosaw_deploy.engine.manifest import read_manifest, write_manifest
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import file_sha256

from .conftest import DEPTH2, TINY, golden_cases, locked_elsewhere

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
export_trt = pytest.importorskip("dinosaw_deploy.export.tensorrt")
from dinosaw_deploy.export.verify import token_cosine  # noqa: E402


# --------------------------------------------------------------------------- fakes
class FakeCudart:
    """``cuda.bindings.runtime`` on host memory: (err, *values) tuples, device != pinned memory.

    Like CUDA, a capture that an illegal call invalidated ends with ``cudaErrorStreamCaptureInvalidated`` and
    no graph, and leaves that error as the "last error" until ``cudaGetLastError`` clears it. Graphs and
    graph execs are tracked, so a leaked or double-freed one fails the test.
    """

    cudaError_t = SimpleNamespace(cudaSuccess=0, cudaErrorStreamCaptureInvalidated=901)
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def __init__(self, gpus: int = 1, name: bytes = b"NVIDIA H100 80GB HBM3", cc: tuple[int, int] = (9, 0)):
        self.gpus, self.name, self.cc = gpus, name, cc
        self.device: dict[int, np.ndarray] = {}
        self.pinned: dict[int, np.ndarray] = {}
        self.capturing: dict[int, list | None] = {}
        self.invalidated: set[int] = set()  # streams whose capture an illegal call broke
        self.live_graphs: dict[int, list] = {}  # cudaGraph_t -> recorded work
        self.live_execs: dict[int, list] = {}  # cudaGraphExec_t -> recorded work
        self.last_error = 0
        self.uploads = 0
        self.launches = 0
        self.graphs = 0  # instantiations
        self._handles = iter(range(5000, 10**9))

    def _alloc(self, table: dict, nbytes: int) -> tuple[int, int]:
        buf = np.zeros(max(nbytes, 4), np.uint8)
        table[buf.ctypes.data] = buf
        return 0, buf.ctypes.data

    def cudaGetErrorString(self, err):
        return 0, b"fake cuda error"

    def cudaGetLastError(self):
        err, self.last_error = self.last_error, 0
        return (err,)

    def cudaGetDeviceCount(self):
        return 0, self.gpus

    def cudaGetDevice(self):
        return 0, 0

    def cudaGetDeviceProperties(self, device):
        return 0, SimpleNamespace(name=self.name + b"\x00\x00", major=self.cc[0], minor=self.cc[1])

    def cudaStreamCreate(self):
        handle = 1000 + len(self.capturing)
        self.capturing[handle] = None
        return 0, handle

    def cudaMalloc(self, nbytes):
        return self._alloc(self.device, nbytes)

    def cudaMallocHost(self, nbytes):
        return self._alloc(self.pinned, nbytes)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        device, host = (dst, src) if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice else (src, dst)
        assert device in self.device and self.device[device].nbytes >= count, "copy outside a device allocation"
        assert host not in self.device, "host side of a copy is device memory"
        assert self.capturing[stream] is None, "copies are not meant to be captured (capture not ended?)"
        self.uploads += kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice
        ctypes.memmove(dst, src, count)
        return (0,)

    def cudaStreamSynchronize(self, stream):
        assert self.capturing[stream] is None, "synchronising a capturing stream"
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        assert self.capturing[stream] is None, "capture already under way"
        self.capturing[stream] = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        ops, self.capturing[stream] = self.capturing[stream], None
        assert ops is not None, "no capture to end"
        if stream in self.invalidated:
            self.invalidated.discard(stream)
            self.last_error = self.cudaError_t.cudaErrorStreamCaptureInvalidated
            return self.last_error, None
        graph = next(self._handles)
        self.live_graphs[graph] = ops
        return 0, graph

    def cudaGraphInstantiate(self, graph, flags):
        assert graph in self.live_graphs, "instantiating a destroyed graph"
        self.graphs += 1
        graph_exec = next(self._handles)
        self.live_execs[graph_exec] = list(self.live_graphs[graph])
        return 0, graph_exec

    def cudaGraphLaunch(self, graph_exec, stream):
        assert graph_exec in self.live_execs, "launching a destroyed graph"
        assert self.capturing[stream] is None, "graph launched into a capture"
        self.launches += 1
        for op in self.live_execs[graph_exec]:
            op()
        return (0,)

    def cudaGraphDestroy(self, graph):
        return (0,) if self.live_graphs.pop(graph, None) is not None else (1,)

    def cudaGraphExecDestroy(self, graph_exec):
        return (0,) if self.live_execs.pop(graph_exec, None) is not None else (1,)

    def cudaFree(self, ptr):
        return (0,) if self.device.pop(ptr, None) is not None else (1,)  # double free -> error

    def cudaFreeHost(self, ptr):
        return (0,) if self.pinned.pop(ptr, None) is not None else (1,)

    def cudaStreamDestroy(self, stream):
        assert self.capturing.pop(stream) is None, "destroying a capturing stream"
        return (0,)

    def read(self, ptr: int, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        assert ptr in self.device and self.device[ptr].nbytes >= count * 4, "tensor address outside device memory"
        return self.device[ptr].view(np.float32)[:count].reshape(shape).copy()

    def write(self, ptr: int, array: np.ndarray) -> None:
        assert ptr in self.device and self.device[ptr].nbytes >= array.nbytes, "output buffer too small"
        self.device[ptr].view(np.float32)[: array.size] = array.ravel()

    def assert_clean(self) -> None:
        """Nothing left allocated, no graph leaked, no stale error."""
        assert not self.device and not self.pinned, "device or pinned memory leaked"
        assert not self.live_graphs and not self.live_execs, "CUDA graph leaked"
        assert not self.last_error, "a CUDA error was left uncleared"


PLAN_MAGIC = b"FAKEPLAN\n"


class FakeContext:
    """An execution context. As the TensorRT docs require, a capture or a graph replay must follow one plain
    ``execute_async_v3`` with the same input shapes (after any shape change); a stale CUDA error (left by a
    failed capture) makes the next enqueue fail, as TensorRT checks the last CUDA error after its launches.
    ``capture_failure``: None, "invalidated" (an illegal call breaks the capture) or "enqueue" (TensorRT
    reports failure while the capture stays valid)."""

    def __init__(self, engine: "FakeEngine") -> None:
        self.engine, self.shapes, self.addresses = engine, {}, {}
        self.prepared: dict | None = None  # shapes of the last plain enqueue
        self.capture_failure: str | None = None

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profile[name]
        ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi))
        if ok:
            self.shapes[name] = tuple(shape)
        return ok

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def get_tensor_shape(self, name):
        batch, _, height, width = self.shapes["pixel_values"]
        p = self.engine.patch
        return (batch, self.engine.channels, height // p, width // p)

    def _execute(self, shapes: dict, addresses: dict) -> None:
        pixels = self.engine.cuda.read(addresses["pixel_values"], shapes["pixel_values"])
        bias = self.engine.cuda.read(addresses["attn_bias"], shapes["attn_bias"])
        p = self.engine.patch
        assert shapes["attn_bias"][-1] == 5 + (pixels.shape[2] // p) * (pixels.shape[3] // p), "bias, pixels differ"
        (out,) = self.engine.session.run(["features"], {"pixel_values": pixels, "attn_bias": bias})
        self.engine.cuda.write(addresses["features"], out)

    def _replay(self, shapes: dict, addresses: dict) -> None:
        assert self.prepared == shapes, "CUDA graph replayed after another input shape ran, without a plain enqueue"
        self._execute(shapes, addresses)

    def execute_async_v3(self, stream_handle):
        assert isinstance(stream_handle, int)
        cuda = self.engine.cuda
        self.engine.executions += 1
        capture = cuda.capturing[stream_handle]
        if capture is None:
            if cuda.last_error:
                return False
            self.prepared = dict(self.shapes)
            self._execute(self.shapes, self.addresses)
            return True
        assert self.prepared == self.shapes, "capture after an input-shape change without a plain enqueue first"
        if self.capture_failure == "invalidated":
            cuda.invalidated.add(stream_handle)
        if self.capture_failure:
            return False
        shapes, addresses = dict(self.shapes), dict(self.addresses)
        capture.append(lambda: self._replay(shapes, addresses))
        return True


class FakeEngine:
    def __init__(self, payload: dict, cuda: FakeCudart) -> None:
        import onnxruntime as ort

        self.cuda = cuda
        self.profile = {k: [tuple(s) for s in v] for k, v in payload["profile"].items()}
        self.session = ort.InferenceSession(payload["onnx"], providers=["CPUExecutionProvider"])
        self.channels = self.session.get_outputs()[0].shape[1]
        self.patch = 14  # the tiny ONNX's
        self.names = ["pixel_values", "attn_bias", "features"]
        self.executions = 0

    num_io_tensors = 3

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return "OUTPUT" if name == "features" else "INPUT"

    def get_tensor_dtype(self, name):
        return "float32"

    def create_execution_context(self):
        return FakeContext(self)


class FakeLayer:
    """A layer of a TensorRT 10 network: strongly typed networks reject precisions and output types (TensorRT
    logs an error and ignores the call; the fake raises so the test fails). TensorRT 11 layers have neither."""

    def __init__(self, kind: str, strongly_typed: bool) -> None:
        self.type, self.num_outputs, self.output_types = kind, 1, {}
        self._precision, self._strongly_typed = None, strongly_typed

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, dtype):
        assert not self._strongly_typed, "strongly typed networks reject ILayer.precision"
        self._precision = dtype

    def set_output_type(self, index, dtype):
        assert not self._strongly_typed, "strongly typed networks reject ILayer.set_output_type"
        self.output_types[index] = dtype


class FakeLayer11:
    """A TensorRT 11 layer: no ``precision``, no ``set_output_type`` (python/src/infer/pyGraph.cpp, 11.1)."""

    __slots__ = ("type", "num_outputs")

    def __init__(self, kind: str) -> None:
        self.type, self.num_outputs = kind, 1


# Enums as the 10.8 and 11.1 Python bindings define them (python/src/infer/pyCore.cpp, include/NvInfer.h).
NETWORK_FLAGS = {
    10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},  # EXPLICIT_BATCH: deprecated, ignored
    11: {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2},  # always strong
}
BUILDER_FLAGS_10 = ["FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE",
                    "EDITABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS",
                    "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE",
                    "EXCLUDE_LEAN_RUNTIME", "FP8", "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE",
                    "WEIGHTLESS", "STRIP_PLAN", "REFIT_IDENTICAL", "WEIGHT_STREAMING", "INT4", "REFIT_INDIVIDUAL",
                    "STRICT_NANS", "MONITOR_MEMORY", "FP4"]
REMOVED_IN_11 = {"FP16", "BF16", "INT8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
                 "REJECT_EMPTY_ALGORITHMS", "FP8", "WEIGHTLESS", "INT4", "FP4"}
BUILDER_FLAGS = {10: BUILDER_FLAGS_10,
                 11: [f for f in BUILDER_FLAGS_10 if f not in REMOVED_IN_11] + ["DISTRIBUTIVE_INDEPENDENCE"]}


class FakeTensorRT:
    """The ``tensorrt`` module as far as export/tensorrt.py and backends/tensorrt.py use it (10.x or 11.x)."""

    TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
    HardwareCompatibilityLevel = SimpleNamespace(AMPERE_PLUS="AMPERE_PLUS")
    LayerType = SimpleNamespace(NORMALIZATION="NORMALIZATION", SOFTMAX="SOFTMAX", MATRIX_MULTIPLY="MATRIX_MULTIPLY")
    float32 = "float32"

    def __init__(self, cuda: FakeCudart, version: str = "10.8.0.43") -> None:
        self.__version__ = version
        self.cuda = cuda
        major = int(version.split(".")[0])
        self.NetworkDefinitionCreationFlag = SimpleNamespace(**NETWORK_FLAGS[major])
        self.BuilderFlag = SimpleNamespace(**{f: f for f in BUILDER_FLAGS[major]})
        self.deserialised = 0
        self.builds: list[dict] = []
        self.timing_cache_device = cuda.name  # what a cache created here is tagged with
        self.accepts_timing_caches = True
        fake = self

        class Logger:
            WARNING = "WARNING"

            def __init__(self, level):
                self.level = level

        class Runtime:
            def __init__(self, logger):
                self.engine_host_code_allowed = False

            def deserialize_cuda_engine(self, data):
                fake.deserialised += 1
                if not data.startswith(PLAN_MAGIC):
                    return None
                return FakeEngine(json.loads(data[len(PLAN_MAGIC):]), fake.cuda)

        class OnnxParser:
            def __init__(self, network, logger):
                self.network, self.num_errors = network, 0

            def parse_from_file(self, path):
                self.network.onnx = path
                return True

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                known = sum(1 << v for v in NETWORK_FLAGS[major].values())
                if flags & ~known:
                    return None  # TensorRT logs "invalid flags" and returns no network
                strong = major >= 11 or bool(flags >> NETWORK_FLAGS[10]["STRONGLY_TYPED"] & 1)
                kinds = ("NORMALIZATION", "MATRIX_MULTIPLY", "SOFTMAX")
                layers = [FakeLayer11(k) if major >= 11 else FakeLayer(k, strong) for k in kinds]
                return SimpleNamespace(flags=flags, strongly_typed=strong, onnx=None, layers=layers,
                                       num_layers=len(layers), get_layer=layers.__getitem__)

            def create_builder_config(self):
                return FakeConfig(fake)

            def create_optimization_profile(self):
                profile = SimpleNamespace(shapes={})
                profile.set_shape = lambda name, lo, opt, hi: profile.shapes.__setitem__(name, [lo, opt, hi])
                return profile

            def build_serialized_network(self, network, config):
                fake.builds.append({"network": network, "config": config})
                payload = {"onnx": network.onnx, "profile": config.profiles[0].shapes}
                return PLAN_MAGIC + json.dumps(payload).encode()

        self.Logger, self.Runtime, self.OnnxParser, self.Builder = Logger, Runtime, OnnxParser, Builder


class FakeTimingCache:
    """Serialised as ``TC|<device>|`` plus one ``+`` per build that used it."""

    MAGIC = b"TC|"

    def __init__(self, device: bytes, builds: int) -> None:
        self.device, self.builds = device, builds

    def serialize(self) -> bytes:
        return self.MAGIC + self.device + b"|" + b"+" * (self.builds + 1)


class FakeConfig:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        self.flags = {"TF32"}  # on by default, as in TensorRT
        self.profiles, self.pools, self.cache = [], {}, None
        self.builder_optimization_level = 3
        self.hardware_compatibility_level = None

    def set_flag(self, flag):
        assert flag in vars(self.trt.BuilderFlag).values(), f"no BuilderFlag {flag} in TensorRT {self.trt.__version__}"
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)

    def create_timing_cache(self, data):
        """A new cache for b"", the parsed one for our format, None (TensorRT's null) for anything else."""
        data = bytes(data)
        if not data:
            return FakeTimingCache(self.trt.timing_cache_device, 0)
        if not data.startswith(FakeTimingCache.MAGIC) or data.count(b"|") != 2:
            return None
        device, builds = data[len(FakeTimingCache.MAGIC):].split(b"|")
        return FakeTimingCache(device, len(builds))

    def set_timing_cache(self, cache, ignore_mismatch):
        if not isinstance(cache, FakeTimingCache):
            raise TypeError("set_timing_cache(): incompatible function arguments")  # pybind11 on None
        if not self.trt.accepts_timing_caches or (cache.device != self.trt.timing_cache_device and not ignore_mismatch):
            return False  # "A failure will be reported if the CUDA device property ... is different"
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache  # None if no cache is set


@pytest.fixture
def fake_gpu(monkeypatch):
    """Swap in the fake ``tensorrt`` and CUDA runtime; returns (trt, cudart)."""
    cudart = FakeCudart()
    trt = FakeTensorRT(cudart)
    monkeypatch.setattr(trt_backend_module, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(export_trt, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(cuda_module, "import_cudart", lambda: cudart)
    return trt, cudart


@pytest.fixture
def engines(tiny_engine, tmp_path) -> Path:
    """A private copy of the tiny fp32 + fp16 exports with their manifests."""
    for suffix in (".onnx", ".onnx.json", ".fp16.onnx", ".fp16.onnx.json"):
        shutil.copy(tiny_engine.with_name("tiny" + suffix), tmp_path / ("tiny" + suffix))
    return tmp_path


SMALL = export_trt.PlanOptions(tile=70, min_tile=42, max_tile=84, max_batch=2)


# --------------------------------------------------------------------------- profiles
@pytest.mark.parametrize("tile, lo, hi, batch", [(518, 224, 518, 64), (70, 42, 84, 2), (14, 14, 14, 1)])
def test_profile_shapes_keep_pixels_and_bias_consistent(tile, lo, hi, batch):
    profile = TileProfile(opt_tile=tile, min_tile=lo, max_tile=hi, max_batch=batch, opt_batch=batch, bias_heads=6)
    pixels, bias = profile.shapes()["pixel_values"], profile.shapes()["attn_bias"]
    assert [s[0] for s in pixels] == [1, batch, batch]
    assert [s[2] for s in pixels] == [lo, tile, hi] and all(s[2] == s[3] for s in pixels)
    for px, bs in zip(pixels, bias):
        assert bs == (1, 6, 5 + (px[2] // 14) * (px[3] // 14), 5 + (px[2] // 14) * (px[3] // 14))


def test_profile_checks_and_ort_strings():
    profile = TileProfile(opt_tile=70, min_tile=42, max_tile=84, max_batch=2, opt_batch=2)
    profile.check(2, 42, 84)  # a rectangle inside the square range is fine
    with pytest.raises(DinosawError, match="outside the engine's profile"):
        profile.check(1, 98, 70)
    with pytest.raises(DinosawError, match="batch 3"):
        profile.check(3, 70, 70)
    assert profile.ort_provider_options() == {
        "trt_profile_min_shapes": "pixel_values:1x3x42x42,attn_bias:1x1x14x14",
        "trt_profile_opt_shapes": "pixel_values:2x3x70x70,attn_bias:1x1x30x30",
        "trt_profile_max_shapes": "pixel_values:2x3x84x84,attn_bias:1x1x41x41",
    }
    assert TileProfile.from_dict(json.loads(json.dumps(profile.to_dict()))) == profile


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"opt_tile": 500}, r"not a multiple of the 14-px patch \(try 490 or 504\)"),
        ({"min_tile": 518, "opt_tile": 224}, "min-tile <= --tile"),
        ({"max_batch": 0, "opt_batch": 0}, "batch"),
    ],
)
def test_bad_profiles_are_refused(kwargs, match):
    with pytest.raises(DinosawError, match=match):
        TileProfile(**kwargs)
    with pytest.raises(DinosawError, match=match):  # the plan options, against the model's patch
        export_trt.PlanOptions(tile=kwargs.get("opt_tile", 518), min_tile=kwargs.get("min_tile"),
                               max_batch=kwargs.get("max_batch", 64)).profile(VITS14)


VITS14 = {"architecture": {"patch_size": 14, "num_heads": 6}, "bias": {}}
VITB16 = {"architecture": {"patch_size": 16, "num_heads": 12}, "bias": {}}


def test_plan_options_use_the_engines_patch_size(engines, monkeypatch):
    """Tiles are checked against the model's own patch (from its manifest), not a hard-coded 14."""
    options = export_trt.PlanOptions(tile=512, min_tile=256, max_tile=512, max_batch=2)  # multiples of 16
    assert options.profile(VITB16).patch_size == 16 and options.profile(VITB16).max_tile == 512
    with pytest.raises(DinosawError, match="multiple of the 14-px patch"):
        options.profile(VITS14)
    for bad in ({"tile": 224, "min_tile": 518}, {"max_batch": 0}):  # patch-free mistakes: refused at once
        with pytest.raises(DinosawError):
            export_trt.PlanOptions(**bad)
    # build_plan reads the patch from the ONNX's manifest and refuses bad tiles before TensorRT loads
    manifest = read_manifest(engines / "tiny.onnx")
    patch16 = {**manifest, "architecture": {**manifest["architecture"], "patch_size": 16}}

    class Patch16Source:  # an ONNX of a 16-px-patch model (a consistent manifest can only come from an export)
        def __init__(self, path, backend):
            self.manifest = patch16

    monkeypatch.setattr(export_trt, "OrtBackend", Patch16Source)
    monkeypatch.setattr(export_trt, "import_tensorrt", lambda: pytest.fail("TensorRT loaded before the tile check"))
    with pytest.raises(DinosawError, match=r"--tile 70 is not a multiple of the 16-px patch \(try 64 or 80\)"):
        export_trt.build_plan(engines / "tiny.onnx", SMALL)


def test_make_profile_follows_the_bias_config():
    arch = {"patch_size": 14, "num_heads": 6, "num_prefix_tokens": 5}
    constant = make_profile(tile=518, max_batch=8, manifest={"architecture": arch, "bias": {"slopes": "constant"}})
    geometric = make_profile(tile=126, max_batch=8, manifest={"architecture": arch, "bias": {"slopes": "geometric"}})
    assert (constant.min_tile, constant.max_tile, constant.bias_heads) == (224, 518, 1)
    assert (geometric.min_tile, geometric.max_tile, geometric.bias_heads) == (126, 126, 6)


# --------------------------------------------------------------------------- manifest decisions
def _manifest(tmp_path, **tensorrt) -> tuple[dict, Path]:
    onnx_file = tmp_path / "m.fp16.onnx"
    onnx_file.write_bytes(b"onnx bytes")
    manifest = {
        "kind": "tensorrt-plan", "precision": "fp16", "package_version": __version__,
        "source_onnx": {"file": onnx_file.name, "sha256": file_sha256(onnx_file)},
        "tensorrt": {"version": "10.8.0.43", "hardware_compatibility": "none", "version_compatible": False,
                     "opt_level": 3, **tensorrt},
        "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
        "profile": TileProfile().to_dict(),
        "architecture": {}, "bias": {}, "preprocessing": {},
    }
    return manifest, tmp_path / "m.fp16.plan"


H100 = MachineInfo("10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0")


@pytest.mark.parametrize(
    "machine, tensorrt, reason",
    [
        (MachineInfo("10.9.0.34", H100.gpu_name, "9.0"), {}, "TensorRT 10.8.0.43, this machine has TensorRT 10.9"),
        (MachineInfo("10.7.0.23", H100.gpu_name, "9.0"), {"version_compatible": True}, "10.8.0.43 or later"),
        (MachineInfo(H100.tensorrt_version, "NVIDIA A100-SXM4-80GB", "8.0"), {}, "compute capability 9.0"),
        (MachineInfo(H100.tensorrt_version, "Tesla T4", "7.5"), {"hardware_compatibility": "ampere_plus"}, ">= 8.0"),
    ],
)
def test_stale_plans_are_refused_with_the_rebuild_command(tmp_path, machine, tensorrt, reason):
    manifest, plan = _manifest(tmp_path, **tensorrt)
    with pytest.raises(StaleEngineError, match=reason) as info:
        check_plan(manifest, machine, plan)
    message = str(info.value)
    assert f"dinosaw-deploy export --from-onnx {tmp_path / 'm.fp16.onnx'} --tile 518 --min-tile 224" in message
    assert message.rstrip().endswith("--overwrite")
    if tensorrt.get("version_compatible"):
        assert "--version-compatible" in message


@pytest.mark.parametrize(
    "machine, tensorrt",
    [
        (H100, {}),
        (MachineInfo("11.1.0.5", H100.gpu_name, "9.0"), {"version_compatible": True}),
        (MachineInfo(H100.tensorrt_version, "NVIDIA RTX A6000", "8.6"), {"hardware_compatibility": "ampere_plus"}),
    ],
)
def test_compatible_plans_are_accepted(tmp_path, machine, tensorrt):
    manifest, plan = _manifest(tmp_path, **tensorrt)
    assert check_plan(manifest, machine, plan) == []


def test_changed_onnx_is_stale_and_soft_mismatches_only_warn(tmp_path):
    manifest, plan = _manifest(tmp_path)
    (tmp_path / "m.fp16.onnx").write_bytes(b"re-exported")
    with pytest.raises(StaleEngineError, match="m.fp16.onnx beside it changed"):
        check_plan(manifest, H100, plan)
    manifest, plan = _manifest(tmp_path)
    manifest["package_version"] = "0.0.1"
    warnings = check_plan(manifest, MachineInfo(H100.tensorrt_version, "NVIDIA H100 PCIe", "9.0"), plan)
    assert len(warnings) == 2 and "H100 PCIe" in warnings[0] and "0.0.1" in warnings[1]
    with pytest.raises(DinosawError, match="does not describe a TensorRT plan"):
        check_plan({**manifest, "kind": "onnx"}, H100, plan)
    with pytest.raises(DinosawError, match="lacks profile"):
        check_plan({k: v for k, v in manifest.items() if k != "profile"}, H100, plan)


# --------------------------------------------------------------------------- builder (fake TensorRT)
def test_precision_and_network_flags(fake_gpu):
    trt, _ = fake_gpu
    assert export_trt.plan_precision("fp16", False, 11) == "fp16"
    assert export_trt.plan_precision("fp32", False, 11) == "fp32"
    assert export_trt.plan_precision("fp32", True, 10) == "fp16-flag"
    with pytest.raises(DinosawError, match="TensorRT 11 builds strongly typed"):
        export_trt.plan_precision("fp32", True, 11)
    # STRONGLY_TYPED is enum value 1 on TensorRT 10 (value 0 is the ignored EXPLICIT_BATCH) ...
    assert export_trt.network_flags(trt, "fp16") == 1 << 1 and export_trt.network_flags(trt, "fp16-flag") == 0
    # ... and 0 on TensorRT 11 (deprecated there: always strongly typed; 1 is PREFER_JIT_PYTHON_PLUGINS)
    assert export_trt.network_flags(FakeTensorRT(fake_gpu[1], version="11.1.0.5"), "fp32") == 1 << 0
    assert plan_path_for("e/x.fp16.onnx", "fp16") == Path("e/x.fp16.plan")
    assert plan_path_for("e/x.onnx", "fp16-flag") == Path("e/x.fp16-flag.plan")


def test_build_plan_writes_a_verified_plan_manifest_and_timing_cache(fake_gpu, engines):
    trt, cudart = fake_gpu
    plan = export_trt.build_plan(engines / "tiny.fp16.onnx", SMALL)
    assert plan == engines / "tiny.fp16.plan"
    build = trt.builds[-1]
    assert build["network"].strongly_typed and build["network"].onnx == str(engines / "tiny.fp16.onnx")
    config = build["config"]
    assert config.flags == {"TF32"} and config.builder_optimization_level == 3 and not config.pools
    shapes = config.profiles[0].shapes
    assert shapes["pixel_values"] == [(1, 3, 42, 42), (2, 3, 70, 70), (2, 3, 84, 84)]
    assert shapes["attn_bias"] == [(1, 1, 14, 14), (1, 1, 30, 30), (1, 1, 41, 41)]

    manifest = read_manifest(plan)
    assert manifest["kind"] == "tensorrt-plan" and manifest["precision"] == "fp16"
    assert manifest["tensorrt"]["version"] == "10.8.0.43" and manifest["tensorrt"]["strongly_typed"]
    assert manifest["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert manifest["source_onnx"]["sha256"] == file_sha256(engines / "tiny.fp16.onnx")
    assert manifest["plan_sha256"] == file_sha256(plan)
    assert manifest["architecture"]["embed_dim"] == 96 and manifest["package_version"] == __version__
    assert manifest["verification"]["passed"] and manifest["verification"]["reference"].startswith("tiny.onnx")
    assert manifest["verification"]["min_token_cosine"] >= 0.999
    cache = engines / "timing-sm90-trt10.8.0.43.cache"
    assert cache.read_bytes() == b"TC|NVIDIA H100 80GB HBM3|+" and manifest["tensorrt"]["timing_cache"] == cache.name
    cudart.assert_clean()  # verification freed everything

    with pytest.raises(DinosawError, match="exists; pass --overwrite"):
        export_trt.build_plan(engines / "tiny.fp16.onnx", SMALL)
    export_trt.build_plan(engines / "tiny.fp16.onnx", SMALL, overwrite=True)
    assert trt.builds[-1]["config"].cache.builds == 1 and cache.read_bytes().endswith(b"|++")  # reused, extended


def test_a_plan_being_built_is_locked(fake_gpu, engines):
    """A second builder of the same plan stops at once instead of racing the first to the rename."""
    trt, _ = fake_gpu
    plan = plan_path_for(engines / "tiny.fp16.onnx", "fp16")
    with locked_elsewhere(plan):
        with pytest.raises(DinosawError, match="being written by another"):
            export_trt.build_plan(engines / "tiny.fp16.onnx", SMALL)
    assert not plan.exists() and not trt.builds
    assert export_trt.build_plan(engines / "tiny.fp16.onnx", SMALL) == plan


def test_build_options_reach_the_builder(fake_gpu, engines):
    trt, _ = fake_gpu
    options = export_trt.PlanOptions(tile=70, min_tile=42, max_tile=84, max_batch=2, workspace_gib=1.5, opt_level=5,
                                     fp16_flag=True, hardware_compatible=True, version_compatible=True)
    plan = export_trt.build_plan(engines / "tiny.onnx", options)
    assert plan.name == "tiny.fp16-flag.plan"
    network, config = trt.builds[-1]["network"], trt.builds[-1]["config"]
    assert network.flags == 0  # weakly typed: the FP16 flag needs it
    assert {"FP16", "PREFER_PRECISION_CONSTRAINTS", "VERSION_COMPATIBLE"} <= config.flags
    assert config.pools == {"WORKSPACE": int(1.5 * 2**30)} and config.builder_optimization_level == 5
    assert config.hardware_compatibility_level == "AMPERE_PLUS"
    assert [(layer.type, layer.precision) for layer in network.layers] == [
        ("NORMALIZATION", "float32"), ("MATRIX_MULTIPLY", None), ("SOFTMAX", "float32")]
    manifest = read_manifest(plan)
    assert manifest["precision"] == "fp16-flag" and manifest["tensorrt"]["version_compatible"]
    assert "--fp16" in str(pytest.raises(StaleEngineError, check_plan, manifest,
                                         MachineInfo("10.0.0.1", "x", "9.0"), plan).value)

    export_trt.build_plan(engines / "tiny.onnx", SMALL)  # fp32: TF32 off so fp32 means fp32
    assert "TF32" not in trt.builds[-1]["config"].flags
    assert read_manifest(engines / "tiny.plan")["verification"]["max_abs_error"] <= 1e-3


def test_tensorrt_11_has_no_fp16_flag_path(fake_gpu, engines, monkeypatch):
    trt11 = FakeTensorRT(fake_gpu[1], version="11.1.0.5")
    monkeypatch.setattr(export_trt, "import_tensorrt", lambda: trt11)
    with pytest.raises(DinosawError, match="strongly typed"):
        export_trt.build_plan(engines / "tiny.onnx", export_trt.PlanOptions(tile=70, max_batch=2, fp16_flag=True))
    assert not list(engines.glob("*.plan"))


def test_tensorrt_11_builds_strongly_typed_plans(fake_gpu, engines, monkeypatch):
    """TensorRT 11: no FP16/precision-constraint flags, no layer precisions; fp16 and fp32 plans still build."""
    trt11 = FakeTensorRT(fake_gpu[1], version="11.1.0.5")
    monkeypatch.setattr(export_trt, "import_tensorrt", lambda: trt11)
    monkeypatch.setattr(trt_backend_module, "import_tensorrt", lambda: trt11)
    assert not hasattr(trt11.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS") and not hasattr(trt11.BuilderFlag, "FP16")
    for onnx_name, plan_name in (("tiny.fp16.onnx", "tiny.fp16.plan"), ("tiny.onnx", "tiny.plan")):
        plan = export_trt.build_plan(engines / onnx_name, SMALL)
        network, config = trt11.builds[-1]["network"], trt11.builds[-1]["config"]
        assert plan.name == plan_name and network.strongly_typed and network.flags == 1  # STRONGLY_TYPED = 0
        assert read_manifest(plan)["verification"]["passed"] and config.flags <= {"TF32"}
    fake_gpu[1].assert_clean()


def test_strongly_typed_networks_get_no_layer_precisions(fake_gpu):
    """pin_fp32_islands is for weakly typed TensorRT 10 networks only; the fakes reject it elsewhere, as
    TensorRT does (10: "Strongly-typed networks reject calls to method setPrecision"; 11: no such API)."""
    trt, cudart = fake_gpu
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    assert export_trt.pin_fp32_islands(trt, builder.create_network(0)) == 2
    with pytest.raises(AssertionError, match="reject ILayer.precision"):
        export_trt.pin_fp32_islands(trt, builder.create_network(export_trt.network_flags(trt, "fp16")))
    trt11 = FakeTensorRT(cudart, version="11.1.0.5")
    with pytest.raises(AttributeError):
        export_trt.pin_fp32_islands(trt11, trt11.Builder(None).create_network(export_trt.network_flags(trt11, "fp16")))
    assert trt.Builder(None).create_network(1 << 5) is None  # unknown creation flags: no network
    with pytest.raises(AttributeError):  # flags TensorRT 11 removed do not exist there
        trt11.BuilderFlag.OBEY_PRECISION_CONSTRAINTS


@pytest.mark.parametrize("saved, note", [
    (b"junk from a crash", "refused the saved timing cache"),  # create_timing_cache -> None
    (b"TC|NVIDIA A100-SXM4-80GB|+++", "refused the saved timing cache"),  # set_timing_cache -> False
    (None, "building without one"),  # TensorRT takes no cache at all
])
def test_refused_timing_caches_are_replaced_never_serialised_when_missing(fake_gpu, engines, saved, note):
    trt, _ = fake_gpu
    cache = engines / "timing-sm90-trt10.8.0.43.cache"
    if saved is not None:
        cache.write_bytes(saved)
    else:
        trt.accepts_timing_caches = False
    said = []
    plan = export_trt.build_plan(engines / "tiny.fp16.onnx", SMALL, echo=said.append)
    assert any(note in line for line in said)
    if saved is not None:  # a fresh cache from this build replaces the refused one
        assert cache.read_bytes() == b"TC|NVIDIA H100 80GB HBM3|+"
        assert read_manifest(plan)["tensorrt"]["timing_cache"] == cache.name
    else:
        assert not cache.exists() and read_manifest(plan)["tensorrt"]["timing_cache"] is None


# --------------------------------------------------------------------------- runtime (fake TensorRT)
def test_plan_runs_like_the_onnx(fake_gpu, engines):
    trt, cudart = fake_gpu
    plan = export_trt.build_plan(engines / "tiny.onnx", SMALL)
    fx = FeatureExtractor(plan, batch_size=8)  # auto -> native TensorRT
    reference = FeatureExtractor(engines / "tiny.onnx", backend="cpu")
    assert fx.backend.name == "tensorrt" and fx.plan == plan and fx.batch_size == 2  # capped by the profile
    assert fx.embed_dim == 96 and fx.num_heads == 6 and fx.patch_size == 14
    rng = np.random.default_rng(3)
    batch = rng.normal(size=(5, 3, 56, 84)).astype(np.float32)  # 5 images -> 3 engine calls
    executions = fx.backend.engine.executions
    np.testing.assert_allclose(fx.run(batch), reference.run(batch), atol=1e-5)
    assert fx.backend.engine.executions - executions == 3
    uploads = cudart.uploads
    for name, case in golden_cases(TINY).items():
        if case["input"].shape[2] // 14 * 14 > 84:
            with pytest.raises(DinosawError, match="outside the engine's profile"):
                fx.run(case["input"])
            continue
        got = fx.run(case["input"])
        assert np.abs(got - case["feature_map"]).max() <= 1e-4, name
    image = rng.random((60, 75), dtype=np.float32)
    np.testing.assert_allclose(fx(image), reference(image), atol=1e-5)
    assert len(fx.backend._biases) == 3  # grids 4x6 (batch above), 5x5, 4x5: each uploaded once
    assert cudart.uploads - uploads == 2 + 4  # two new grids' biases + one pixel upload per call


def _graph_run(engines, **backend_options):
    plan = export_trt.build_plan(engines / "tiny.onnx", SMALL)
    backend = TensorRTBackend(plan, cuda_graphs=True, **backend_options)
    plain = FeatureExtractor(engines / "tiny.onnx", backend="cpu")
    rng = np.random.default_rng(4)
    inputs = {"A": rng.normal(size=(2, 3, 70, 70)).astype(np.float32),
              "B": rng.normal(size=(1, 3, 42, 56)).astype(np.float32)}

    def run(sequence: str) -> None:
        for key in sequence:
            pixels = inputs[key] + rng.normal(size=inputs[key].shape).astype(np.float32)  # new data each call
            np.testing.assert_allclose(FeatureExtractor(plan, backend=backend).run(pixels), plain.run(pixels),
                                       atol=1e-5)

    return backend, run


def test_cuda_graphs_replay_only_after_a_plain_enqueue_of_their_shape(fake_gpu, engines):
    """TensorRT: after an input-shape change, execute_async_v3 must run once before a capture or a replay.
    The fake context asserts both; every output is checked against ONNX Runtime."""
    _, cudart = fake_gpu
    backend, run = _graph_run(engines)
    executions = lambda: backend.engine.executions  # noqa: E731
    run("AABA")  # A plain, A captured + replayed, B plain, back to A: plain first (its shape changed)
    assert (cudart.graphs, cudart.launches, executions()) == (1, 1, 4)
    run("AA")  # A's graph replayed again: no new capture, no extra execution
    assert (cudart.graphs, cudart.launches, executions()) == (1, 3, 4)
    run("BB")  # B plain (shape changed), then captured + replayed
    assert (cudart.graphs, cudart.launches, executions()) == (2, 4, 6)
    backend.close()
    cudart.assert_clean()


def test_evicted_biases_take_their_graphs_along(fake_gpu, engines):
    _, cudart = fake_gpu
    backend, run = _graph_run(engines, bias_cache=1)
    run("AABBAA")  # each switch evicts the other grid's bias and the graph that baked in its address
    assert (cudart.graphs, cudart.launches) == (3, 3) and len(cudart.live_execs) == 1
    backend.close()
    cudart.assert_clean()


@pytest.mark.parametrize("failure", ["invalidated", "enqueue"])
def test_failed_capture_ends_cleanly_and_falls_back_to_plain_enqueue(fake_gpu, engines, failure, caplog):
    """A failed capture is ended, its partial graph destroyed and the CUDA error cleared (else the next
    enqueue fails); that shape then runs without a graph, other shapes still get theirs."""
    _, cudart = fake_gpu
    backend, run = _graph_run(engines)
    backend.context.capture_failure = failure
    with caplog.at_level(logging.WARNING, logger="dinosaw_deploy"):
        run("AAA")  # plain, failed capture -> plain, plain (no second try)
    assert cudart.graphs == 0 and cudart.launches == 0 and backend.engine.executions == 4
    assert not cudart.live_graphs and not cudart.last_error
    assert sum("cannot be captured in a CUDA graph" in r.getMessage() for r in caplog.records) == 1
    backend.context.capture_failure = None
    run("BB")
    assert cudart.graphs == 1 and cudart.launches == 1
    backend.close()
    cudart.assert_clean()


def test_cuda_graph_backend_is_checked_against_its_model(fake_gpu, engines):
    plan = export_trt.build_plan(engines / "tiny.onnx", SMALL)
    with pytest.raises(DinosawError, match="runs .*tiny.plan, not"):
        FeatureExtractor(engines / "tiny.onnx", backend=TensorRTBackend(plan, cuda_graphs=True))


def test_stale_or_broken_plans_fail_before_tensorrt_sees_them(fake_gpu, engines):
    trt, cudart = fake_gpu
    plan = export_trt.build_plan(engines / "tiny.fp16.onnx", SMALL)
    manifest = read_manifest(plan)
    seen = trt.deserialised

    write_manifest(plan, {**manifest, "tensorrt": {**manifest["tensorrt"], "version": "10.3.0.26"}})
    with pytest.raises(StaleEngineError, match=r"TensorRT 10.3.0.26.*export --from-onnx .*tiny.fp16.onnx"):
        FeatureExtractor(plan)
    cudart.cc = (8, 9)
    write_manifest(plan, manifest)
    with pytest.raises(StaleEngineError, match=r"compute capability 9.0\), this GPU is .* \(8.9\)"):
        FeatureExtractor(plan)
    cudart.cc = (9, 0)
    assert trt.deserialised == seen  # none of these reached TensorRT

    plan.write_bytes(b"garbage")  # sha no longer matches the manifest
    with pytest.raises(StaleEngineError, match="does not match its manifest"):
        FeatureExtractor(plan)
    write_manifest(plan, {**manifest, "plan_sha256": file_sha256(plan)})
    with pytest.raises(StaleEngineError, match="null engine"):
        FeatureExtractor(plan)
    cudart.gpus = 0
    with pytest.raises(DinosawError, match="no NVIDIA GPU"):
        FeatureExtractor(plan)


def test_plans_without_tensorrt_or_manifest_are_clear_errors(engines, tmp_path):
    from click.testing import CliRunner

    from dinosaw_deploy.cli import main

    plan = tmp_path / "x.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(DinosawError, match="no manifest found"):
        FeatureExtractor(plan)
    write_manifest(plan, {"kind": "tensorrt-plan"})
    if not export_trt.tensorrt_available():
        with pytest.raises(DinosawError, match="TensorRT is not installed"):
            FeatureExtractor(plan)
        result = CliRunner().invoke(main, ["export", "--from-onnx", str(engines / "tiny.fp16.onnx")])
        assert result.exit_code == 1 and result.output.count("\n") == 1
        assert result.output.startswith("Error: TensorRT is not installed")
    with pytest.raises(DinosawError, match="only backend 'tensorrt' runs it"):
        FeatureExtractor(plan, backend="cpu")
    result = CliRunner().invoke(main, ["export", "--from-onnx", str(engines / "tiny.onnx"), "--checkpoint", "w.pth"])
    assert result.exit_code == 1 and "--from-onnx only builds a plan" in result.output
    # tiles are checked against the ONNX's own patch (14 here) before TensorRT is even imported
    result = CliRunner().invoke(main, ["export", "--from-onnx", str(engines / "tiny.onnx"), "--tile", "500"])
    assert result.exit_code == 1 and "(try 490 or 504)" in result.output and result.output.count("\n") == 1
    if not export_trt.tensorrt_available():  # a forced plan build fails before the (slow) export
        out = tmp_path / "out"
        out.mkdir()
        result = CliRunner().invoke(main, ["export", "--checkpoint", str(TINY / "weights_timm.pth"), "--config",
                                           str(TINY / "config.json"), "-o", str(out), "--tensorrt"])
        assert result.exit_code == 1 and "TensorRT is not installed" in result.output and not list(out.iterdir())



def test_a_full_export_refuses_bad_tiles_before_writing_then_builds_the_plan(fake_gpu, tmp_path):
    """``export --tensorrt`` checks --tile against the checkpoint's 14-px patch before any ONNX exists,
    then exports and builds the plan in one call."""
    from click.testing import CliRunner

    from dinosaw_deploy.cli import main

    out = tmp_path / "out"
    args = ["export", "--checkpoint", str(TINY / "weights_timm.pth"), "--config", str(TINY / "config.json"),
            "-o", str(out), "--name", "t", "--fp16", "--tensorrt", "--max-batch", "2", "--min-tile", "42",
            "--max-tile", "84"]
    result = CliRunner().invoke(main, [*args, "--tile", "75"])
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert "--tile 75 is not a multiple of the 14-px patch (try 70 or 84)" in result.output
    assert not out.exists() or not list(out.iterdir())
    result = CliRunner().invoke(main, [*args, "--tile", "70"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} >= {"t.onnx", "t.fp16.onnx", "t.fp16.plan", "t.fp16.plan.json"}
    assert read_manifest(out / "t.fp16.plan")["profile"]["opt_tile"] == 70
    result = CliRunner().invoke(main, [*args, "--tile", "70"])  # everything exists: refused before any work
    assert result.exit_code == 1 and "exists; pass --overwrite" in result.output

# --------------------------------------------------------------------------- fp16 graph and numerics
def _value_types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({init.name: init.data_type for init in graph.initializer})
    return types


def test_fp16_graph_feeds_attention_a_bias_of_q_dtype(tiny_engine):
    model = onnx.load(str(tiny_engine.with_name("tiny.fp16.onnx")))
    types, nodes = _value_types(model), model.graph.node
    producer = {out: node for node in nodes for out in node.output}
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    bias_casts = {n.output[0] for n in nodes if n.op_type == "Cast" and n.input[0] == "attn_bias"}
    adds = [n for n in nodes if bias_casts & set(n.input)]
    assert len(adds) == 2  # one per block (depth 2); the raw fp32 bias only feeds Casts:
    assert all(n.op_type == "Cast" for n in nodes if "attn_bias" in n.input)
    for add in adds:
        (bias,) = bias_casts & set(add.input)
        logits = next(i for i in add.input if i != bias)
        bmm1 = producer[logits]
        assert add.op_type == "Add" and bmm1.op_type == "MatMul"
        assert types[bias] == types[logits] == types[bmm1.input[0]] == fp16  # bias dtype == Q dtype
        assert producer[bmm1.input[0]].op_type == "Mul"  # Q scaled before BMM1, as TensorRT's fusion expects
        (to_fp32,) = [n for n in nodes if add.output[0] in n.input]
        (softmax,) = [n for n in nodes if to_fp32.output[0] in n.input]
        assert to_fp32.op_type == "Cast" and softmax.op_type == "Softmax" and types[softmax.input[0]] == fp32
    norms = [n for n in nodes if n.op_type == "LayerNormalization"]
    assert len(norms) == 5 and all(types[n.input[0]] == fp32 and types[n.output[0]] == fp32 for n in norms)
    assert {types[i.name] for i in model.graph.input} == {fp32} and types["features"] == fp32


def _torch_reference(root: Path):
    from dinosaw_deploy.export.checkpoint import load_checkpoint

    return load_checkpoint(root / "weights_timm.pth", config_path=root / "config.json")


def _numerics_cases(fx: FeatureExtractor) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    return {
        "random": rng.normal(size=(2, 3, 70, 98)).astype(np.float32),
        "flat_gray": fx.preprocess(np.full((70, 70), 128, np.uint8))[None],
        "black_image": fx.preprocess(np.zeros((56, 84), np.uint8))[None],
        "zero_input": np.zeros((1, 3, 84, 56), np.float32),
        "white_518": fx.preprocess(np.full((518, 518), 255, np.uint8))[None],
    }


@pytest.mark.parametrize("root", [pytest.param(TINY, id="tiny"), pytest.param(DEPTH2, id="depth2", marks=[
    pytest.mark.shared, pytest.mark.skipif(not DEPTH2.is_dir(), reason="../shared absent")])])
def test_fp16_onnx_matches_fp32_pytorch(root, tiny_engine, tmp_path):
    """cosine >= 0.999 per token vs fp32 PyTorch, flat and zero images included."""
    if root == TINY:
        fp16 = tiny_engine.with_name("tiny.fp16.onnx")
    else:
        from dinosaw_deploy.export.build import run_export

        run_export(root / "weights_timm.pth", out_dir=tmp_path, name="d2", fp16=True, config_path=root / "config.json")
        fp16 = tmp_path / "d2.fp16.onnx"
    fx = FeatureExtractor(fp16, backend="cpu")
    loaded = _torch_reference(root)
    for name, pixels in _numerics_cases(fx).items():
        h, w = pixels.shape[2] // 14, pixels.shape[3] // 14
        with torch.no_grad():
            expected = loaded.model(torch.from_numpy(pixels), torch.from_numpy(np.array(fx.bias(h, w)))).numpy()
        got = fx.run(pixels)
        assert np.isfinite(got).all(), name
        assert token_cosine(got, expected).min() >= 0.999, name


# --------------------------------------------------------------------------- real GPU
def _gpu_missing() -> str | None:
    try:
        import tensorrt  # noqa: F401

        cuda_module.CudaRuntime()
    except Exception as exc:  # ImportError, DinosawError: no TensorRT, no cuda-bindings or no GPU
        return f"needs TensorRT and an NVIDIA GPU ({type(exc).__name__}: {exc})"
    return None


GPU_MISSING = _gpu_missing()


def on_gpu(test):
    """Mark a test ``gpu`` and skip it (before its fixtures run) without TensorRT, a GPU or ../shared."""
    test = pytest.mark.skipif(not DEPTH2.is_dir(), reason="../shared absent")(test)
    test = pytest.mark.skipif(GPU_MISSING is not None, reason=str(GPU_MISSING))(test)
    return pytest.mark.gpu(test)


GPU_OPTIONS = export_trt.PlanOptions(tile=224, min_tile=70, max_tile=224, max_batch=2)


@pytest.fixture(scope="module")
def depth2_plans(tmp_path_factory):
    from dinosaw_deploy.export.build import run_export

    out = tmp_path_factory.mktemp("plans")
    run_export(DEPTH2 / "weights_timm.pth", out_dir=out, name="d2", fp16=True, config_path=DEPTH2 / "config.json")
    return {
        "fp16": export_trt.build_plan(out / "d2.fp16.onnx", GPU_OPTIONS),
        "fp32": export_trt.build_plan(out / "d2.onnx", GPU_OPTIONS),
    }


@on_gpu
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_gpu_plan_matches_pytorch(depth2_plans, precision):
    plan = depth2_plans[precision]
    fx = FeatureExtractor(plan)
    graphs = FeatureExtractor(plan, backend=TensorRTBackend(plan, cuda_graphs=True))
    assert fx.backend.name == "tensorrt"
    for name, case in golden_cases(DEPTH2).items():
        got = fx.run(case["input"])
        np.testing.assert_allclose(graphs.run(case["input"]), got, atol=1e-5)
        if precision == "fp16":
            assert token_cosine(got, case["feature_map"]).min() >= 0.999, name
        else:
            assert np.abs(got - case["feature_map"]).max() <= 1e-3, name


@on_gpu
def test_gpu_rebuild_after_manifest_mismatch(depth2_plans):
    plan = depth2_plans["fp16"]
    manifest = read_manifest(plan)
    write_manifest(plan, {**manifest, "tensorrt": {**manifest["tensorrt"], "version": "9.0.0.0"}})
    with pytest.raises(StaleEngineError, match="--from-onnx") as info:
        FeatureExtractor(plan)
    assert "--max-tile 224 --max-batch 2" in str(info.value)
    export_trt.build_plan(plan.with_name("d2.fp16.onnx"), GPU_OPTIONS, overwrite=True)
    case = golden_cases(DEPTH2)["img224"]
    assert token_cosine(FeatureExtractor(plan).run(case["input"]), case["feature_map"]).min() >= 0.999
