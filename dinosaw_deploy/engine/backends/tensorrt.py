"""Native TensorRT backend: runs a ``.plan`` built by ``dinosaw-deploy export`` with ``execute_async_v3``.

Before TensorRT sees the plan, its manifest is checked against this machine
(:func:`dinosaw_deploy.engine.backends.plan_manifest.check_plan`) and its sha256 against the manifest, so a stale
or swapped engine gives one clear message with the rebuild command, never a crash or a silent
CPU fallback. Device buffers are allocated once for the profile's largest batch and tile; each
grid's bias is uploaded once and cached; optional CUDA-graph replay per input shape.

UNVERIFIED on a GPU: written against the documented TensorRT 10/11 Python API and exercised on
CPU only through fakes of ``tensorrt`` and ``cuda.bindings.runtime`` (tests/test_tensorrt.py):
no GPU or TensorRT was available where this was written and tested.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.engine.backends.base import Backend
from dinosaw_deploy.engine.backends.cuda import CudaRuntime
from dinosaw_deploy.engine.backends.plan_manifest import MachineInfo, StaleEngineError, check_plan, rebuild_command
from dinosaw_deploy.engine.backends.profile import TileProfile
from dinosaw_deploy.engine.contract import INPUT_NAMES, OUTPUT_NAME, check_io_names
from dinosaw_deploy.engine.manifest import read_manifest
from dinosaw_deploy.errors import DinosawError

log = logging.getLogger(__name__)

FLOAT32_BYTES = 4


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise DinosawError(
            "TensorRT is not installed (pip install 'dinosaw-deploy[tensorrt]' on a machine with an NVIDIA GPU); "
            "without it, run the .onnx (backend 'cpu', 'ort-cuda' or 'ort-tensorrt')"
        ) from None
    return tensorrt


class TensorRTBackend(Backend):
    """One TensorRT engine, one execution context, one CUDA stream.

    Args:
        plan_path: the ``.plan``; its manifest ``X.plan.json`` must sit beside it.
        manifest: use this record instead of reading the sidecar (the exporter verifies plans this way).
        cuda_graphs: capture ``execute_async_v3`` once per input shape and replay it (shapes that cannot be
            captured run without a graph).
        bias_cache: how many grids' biases stay on the device.
    """

    name = "tensorrt"

    def __init__(
        self,
        plan_path: str | os.PathLike,
        *,
        manifest: dict[str, Any] | None = None,
        cuda_graphs: bool = False,
        bias_cache: int = 4,
    ) -> None:
        self.model_path = Path(plan_path)
        self.manifest = manifest if manifest is not None else read_manifest(self.model_path)
        self.cuda_graphs = cuda_graphs
        self._bias_cache_size = max(1, bias_cache)
        trt = import_tensorrt()
        self.cuda = CudaRuntime()
        device = self.cuda.device_info()
        self.machine = MachineInfo(str(trt.__version__), device.name, device.compute_capability)
        self.warnings = check_plan(self.manifest, self.machine, self.model_path)
        data = self.model_path.read_bytes()
        if self.manifest.get("plan_sha256") not in (None, hashlib.sha256(data).hexdigest()):
            raise StaleEngineError(
                f"{self.model_path} does not match its manifest (sha256 differs: replaced or truncated?). "
                f"Rebuild it with: {rebuild_command(self.manifest, self.model_path)}"
            )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.manifest.get("tensorrt", {}).get("version_compatible"):
            self._runtime.engine_host_code_allowed = True  # the plan embeds its lean runtime; we built it
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise StaleEngineError(
                f"TensorRT {trt.__version__} could not deserialise {self.model_path} (null engine; see its log "
                f"above). Rebuild it with: {rebuild_command(self.manifest, self.model_path)}"
            )
        self._check_tensors(trt)
        self.profile = TileProfile.from_dict(self.manifest["profile"])
        self.max_batch = self.profile.max_batch
        self.embed_dim = int(self.manifest["architecture"]["embed_dim"])
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise DinosawError(f"TensorRT could not create an execution context for {self.model_path} (GPU memory?)")
        self._allocate()
        log.info("TensorRT %s plan %s on %s", trt.__version__, self.model_path.name, device.name)

    def _check_tensors(self, trt: Any) -> None:
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = sorted((n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT),
                        key=lambda n: INPUT_NAMES.index(n) if n in INPUT_NAMES else len(INPUT_NAMES))
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        check_io_names(inputs, outputs, self.model_path)
        for name in names:
            dtype = self.engine.get_tensor_dtype(name)
            if dtype != trt.float32:
                raise DinosawError(f"{self.model_path}: tensor {name} is {dtype}, expected float32")

    def _allocate(self) -> None:
        p, b, t = self.profile.patch_size, self.profile.max_batch, self.profile.max_tile
        self._in_bytes = b * 3 * t * t * FLOAT32_BYTES
        self._out_bytes = b * self.embed_dim * (t // p) ** 2 * FLOAT32_BYTES
        self.stream = self.cuda.stream()
        self._d_in = self.cuda.malloc(self._in_bytes)
        self._d_out = self.cuda.malloc(self._out_bytes)
        self._h_in_ptr, self._h_in = self.cuda.pinned(self._in_bytes)
        self._h_out_ptr, self._h_out = self.cuda.pinned(self._out_bytes)
        self._biases: OrderedDict[tuple[int, ...], int] = OrderedDict()  # (h, w, heads) -> device pointer
        self._graphs: dict[tuple[int, ...], Any] = {}  # (batch, H, W, h, w, heads) -> graph exec
        self._uncapturable: set[tuple[int, ...]] = set()  # shapes whose capture failed: plain enqueue
        self._enqueued_shape: tuple[int, ...] | None = None  # input shapes of the last plain enqueue

    def check_input(self, batch: int, height: int, width: int) -> None:
        self.profile.check(batch, height, width)

    def _device_bias(self, attn_bias: np.ndarray, key: tuple[int, ...]) -> int:
        """Upload each grid's bias once; evict the least recently used beyond the cache size."""
        if key in self._biases:
            self._biases.move_to_end(key)
            return self._biases[key]
        bias = np.ascontiguousarray(attn_bias, dtype=np.float32)
        ptr = self.cuda.malloc(bias.nbytes)
        self.cuda.to_device(ptr, bias.ctypes.data, bias.nbytes, self.stream)
        self.cuda.synchronize(self.stream)  # the host array may be freed after we return
        self._biases[key] = ptr
        while len(self._biases) > self._bias_cache_size:
            old_key, old_ptr = self._biases.popitem(last=False)
            for shape in [s for s in self._graphs if s[3:] == old_key]:  # graphs baked in that address
                self.cuda.free_graph(self._graphs.pop(shape))
            self.cuda.free(old_ptr)
        return ptr

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise DinosawError(f"TensorRT failed to enqueue {self.model_path.name} (see its log above)")

    def _enqueue(self, shape_key: tuple[int, ...]) -> None:
        """Run the engine on the shapes and addresses just set, from a CUDA graph where possible.

        TensorRT must run one plain ``execute_async_v3`` after the input shapes change before a graph is
        captured or replayed (it updates shape-dependent state then). So the first call after a change runs
        plainly (it does the work; nothing runs twice); later calls with the same shapes capture once, then
        replay. A shape whose capture fails runs plainly from then on.
        """
        if not self.cuda_graphs or shape_key != self._enqueued_shape or shape_key in self._uncapturable:
            self._execute()
            self._enqueued_shape = shape_key
            return
        graph = self._graphs.get(shape_key)
        if graph is None:
            graph = self.cuda.capture(self.stream, lambda: self.context.execute_async_v3(self.stream))
            if graph is None:
                log.warning("%s: input %s cannot be captured in a CUDA graph; running it without one",
                            self.model_path.name, shape_key[:3])
                self._uncapturable.add(shape_key)
                self._execute()
                return
            self._graphs[shape_key] = graph
        self.cuda.launch(graph, self.stream)

    def run(self, pixel_values: np.ndarray, attn_bias: np.ndarray) -> np.ndarray:
        batch, _, height, width = pixel_values.shape
        self.profile.check(batch, height, width)
        h, w = height // self.profile.patch_size, width // self.profile.patch_size
        grid = (h, w, attn_bias.shape[1])
        bias_ptr = self._device_bias(attn_bias, grid)
        n_in = pixel_values.size
        np.copyto(self._h_in[:n_in].reshape(pixel_values.shape), pixel_values)
        self.cuda.to_device(self._d_in, self._h_in_ptr, n_in * FLOAT32_BYTES, self.stream)
        ctx = self.context
        if not (ctx.set_input_shape(INPUT_NAMES[0], tuple(pixel_values.shape))
                and ctx.set_input_shape(INPUT_NAMES[1], tuple(attn_bias.shape))):
            raise DinosawError(f"TensorRT refused input shapes {pixel_values.shape} / {attn_bias.shape}")
        for name, ptr in ((INPUT_NAMES[0], self._d_in), (INPUT_NAMES[1], bias_ptr), (OUTPUT_NAME, self._d_out)):
            ctx.set_tensor_address(name, ptr)
        out_shape = (batch, self.embed_dim, h, w)
        engine_shape = tuple(ctx.get_tensor_shape(OUTPUT_NAME))
        if engine_shape != out_shape:
            raise DinosawError(f"{self.model_path.name}: engine output {engine_shape} != expected {out_shape}")
        self._enqueue((batch, height, width, *grid))
        n_out = int(np.prod(out_shape))
        self.cuda.to_host(self._h_out_ptr, self._d_out, n_out * FLOAT32_BYTES, self.stream)
        self.cuda.synchronize(self.stream)
        return self._h_out[:n_out].reshape(out_shape).copy()

    def close(self) -> None:
        """Free device/pinned memory, graphs and the stream (also on garbage collection)."""
        cuda = getattr(self, "cuda", None)
        if cuda is None or not hasattr(self, "stream"):
            return
        for graph in self._graphs.values():
            cuda.free_graph(graph)
        for ptr in self._biases.values():
            cuda.free(ptr)
        cuda.free(self._d_in)
        cuda.free(self._d_out)
        cuda.free_pinned(self._h_in_ptr)
        cuda.free_pinned(self._h_out_ptr)
        cuda.destroy_stream(self.stream)
        self._graphs, self._biases, self._uncapturable, self._enqueued_shape = {}, OrderedDict(), set(), None
        del self.stream

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass
