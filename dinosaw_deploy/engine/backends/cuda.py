"""Device and pinned host buffers, streams and CUDA graphs through ``cuda-bindings``.

``cuda-bindings`` (NVIDIA's official CUDA Python bindings, ``pip install 'dinosaw-deploy[tensorrt]'``)
is the one optional dependency the native TensorRT backend uses for memory; it is imported
lazily so the runtime stays importable without it. Every call returns ``(err, *values)``;
:meth:`CudaRuntime.call` turns a non-success code into a :class:`DinosawError`.

UNVERIFIED on a GPU: written against the documented ``cuda.bindings.runtime`` API (every call used
here exists in cuda-bindings 12.9 and 13.5) and tested on CPU with a fake of that module only.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError


def import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise DinosawError(
            "the TensorRT backend needs cuda-bindings for device memory: pip install 'dinosaw-deploy[tensorrt]'"
        ) from None
    return cudart


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "9.0"


class CudaRuntime:
    """A few CUDA runtime calls with error checking; ``cudart`` defaults to ``cuda.bindings.runtime``."""

    def __init__(self, cudart: Any = None) -> None:
        self.rt = cudart if cudart is not None else import_cudart()
        try:
            (count,) = self.call("cudaGetDeviceCount")
        except DinosawError as exc:
            raise DinosawError(f"no usable NVIDIA GPU or driver ({exc}); use the .onnx with backend 'cpu'") from None
        if count < 1:
            raise DinosawError("no NVIDIA GPU is visible (cudaGetDeviceCount = 0); use the .onnx with backend 'cpu'")

    def call(self, function: str, *args: Any) -> tuple:
        result = getattr(self.rt, function)(*args)
        err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self.rt.cudaError_t.cudaSuccess:
            _, text = self.rt.cudaGetErrorString(err)
            text = text.decode() if isinstance(text, bytes) else str(text)
            raise DinosawError(f"CUDA error in {function}: {text}")
        return values

    def device_info(self) -> DeviceInfo:
        (device,) = self.call("cudaGetDevice")
        (props,) = self.call("cudaGetDeviceProperties", device)
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return DeviceInfo(name=name.strip("\x00 "), compute_capability=f"{props.major}.{props.minor}")

    def stream(self) -> int:
        (stream,) = self.call("cudaStreamCreate")
        return int(stream)

    def malloc(self, nbytes: int) -> int:
        (ptr,) = self.call("cudaMalloc", nbytes)
        return int(ptr)

    def pinned(self, nbytes: int) -> tuple[int, np.ndarray]:
        """Page-locked host memory (fast, asynchronous copies) and a float32 numpy view of it."""
        (ptr,) = self.call("cudaMallocHost", nbytes)
        ptr = int(ptr)
        view = np.ctypeslib.as_array((ctypes.c_byte * nbytes).from_address(ptr)).view(np.float32)
        return ptr, view

    def to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.call("cudaMemcpyAsync", dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream)

    def to_host(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        self.call("cudaMemcpyAsync", dst, src, nbytes, self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream)

    def synchronize(self, stream: int) -> None:
        self.call("cudaStreamSynchronize", stream)

    def capture(self, stream: int, enqueue: Callable[[], bool]) -> Any | None:
        """Record the work ``enqueue()`` puts on ``stream`` into a launchable graph (a ``cudaGraphExec_t``).

        Nothing runs during a capture: launch the graph for that. None if the work cannot be captured
        (``enqueue`` returns False, or CUDA refuses): the capture is then ended, any partial graph destroyed
        and the error cleared, so plain launches on ``stream`` keep working (as TensorRT's trtexec does).
        """
        rt = self.rt
        success = rt.cudaError_t.cudaSuccess
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        if _status(rt.cudaStreamBeginCapture(stream, mode)) != success:
            rt.cudaGetLastError()
            return None
        try:
            captured = enqueue()
        except BaseException:
            self._discard_capture(stream)
            raise
        if not captured:
            self._discard_capture(stream)
            return None
        result = rt.cudaStreamEndCapture(stream)
        if _status(result) != success:  # e.g. cudaErrorStreamCaptureInvalidated: no graph was made
            rt.cudaGetLastError()
            return None
        graph = result[1]
        try:
            result = rt.cudaGraphInstantiate(graph, 0)
        finally:
            self.call("cudaGraphDestroy", graph)
        if _status(result) != success:
            rt.cudaGetLastError()
            return None
        return result[1]

    def _discard_capture(self, stream: int) -> None:
        """End a failed capture: destroy the graph it made (if TensorRT failed but the capture stayed valid)
        and clear the error it left, which later launches would otherwise report as theirs."""
        result = self.rt.cudaStreamEndCapture(stream)
        if _status(result) == self.rt.cudaError_t.cudaSuccess and result[1] is not None:
            self.rt.cudaGraphDestroy(result[1])
        self.rt.cudaGetLastError()

    def launch(self, graph_exec: Any, stream: int) -> None:
        self.call("cudaGraphLaunch", graph_exec, stream)

    def free(self, ptr: int) -> None:
        self.call("cudaFree", ptr)

    def free_pinned(self, ptr: int) -> None:
        self.call("cudaFreeHost", ptr)

    def free_graph(self, graph_exec: Any) -> None:
        self.call("cudaGraphExecDestroy", graph_exec)

    def destroy_stream(self, stream: int) -> None:
        self.call("cudaStreamDestroy", stream)


def _status(result: Any) -> Any:
    """The error code of a ``cuda.bindings`` call: the first item of its tuple."""
    return result[0] if isinstance(result, tuple) else result
