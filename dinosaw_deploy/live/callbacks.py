"""Frame-callback adapters: hand each frame to a :class:`LiveProcessor` and its outcome to the user.

Acquisition callbacks must return quickly and must never raise: these adapters only submit, and
deliver each frame's outcome later, on the worker thread, to ``on_result(result)`` (a
:class:`FrameResult`) or ``on_error(exc, meta)`` (a dropped or failed frame; default: a logged
warning). An exception raised by ``on_result`` is logged, never propagated.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.live.processor import FrameResult, LiveProcessor

log = logging.getLogger(__name__)

OnResult = Callable[[FrameResult], Any]
OnError = Callable[[BaseException, Any], Any]


def _log_error(exc: BaseException, meta: Any) -> None:
    log.warning("live frame not segmented: %s", exc)


def submit_and_deliver(proc: LiveProcessor, frame: np.ndarray, meta: Any,
                       on_result: OnResult | None, on_error: OnError | None = None) -> Future | None:
    """Submit ``frame``; route its outcome to the callbacks. Never raises (a closed processor is
    reported to ``on_error``, and None returned)."""
    on_error = on_error or _log_error
    try:
        future = proc.submit(frame, meta)
    except DinosawError as exc:
        _call(on_error, exc, meta)
        return None

    def deliver(fut: Future) -> None:
        try:
            result = fut.result()
        except CancelledError:
            return
        except Exception as exc:  # noqa: BLE001 - FrameDropped / FrameError go to the user
            _call(on_error, exc, meta)
            return
        if on_result is not None:
            _call(on_result, result)

    future.add_done_callback(deliver)
    return future


def _call(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - a user callback must not kill the worker or the acquisition
        log.exception("live result callback %r raised", fn)


def image_process_fn(proc: LiveProcessor, on_result: OnResult | None = None,
                     on_error: OnError | None = None) -> Callable[[np.ndarray, dict], tuple[np.ndarray, dict]]:
    """A pycro-manager ``image_process_fn(image, metadata)``: submits the frame and passes image and
    metadata on unchanged (so they are saved as usual); results arrive at ``on_result``.

    >>> Acquisition(..., image_process_fn=image_process_fn(proc, on_result=show))
    """

    def process(image: np.ndarray, metadata: dict) -> tuple[np.ndarray, dict]:
        submit_and_deliver(proc, image, metadata, on_result, on_error)
        return image, metadata

    return process
