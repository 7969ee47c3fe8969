"""pymmcore-plus adapter: segment every MDA frame live (``pip install 'dinosaw-deploy[acquisition]'``).

>>> with connect(core, proc, on_result=show):
...     core.mda.run(sequence)

pymmcore-plus emits ``frameReady(image, event, metadata)`` on the acquisition thread; this adapter
listens through pymmcore-plus's asynchronous relay (:func:`pymmcore_plus.mda.mda_listeners_connected`),
so even a ``block``-ing processor never delays the next frame. Each frame is submitted with
``meta={"event": MDAEvent, "metadata": dict}``; results reach ``on_result`` on the worker thread.
A connection serves any number of MDA runs until :meth:`Connection.disconnect` (keep a reference:
dropping the handle disconnects it).
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.live.callbacks import OnError, OnResult, submit_and_deliver
from dinosaw_deploy.live.processor import LiveProcessor


def _mda_listeners_connected() -> Any:
    try:
        from pymmcore_plus.mda import mda_listeners_connected
    except ImportError:
        raise DinosawError(
            "pymmcore-plus is not installed (pip install 'dinosaw-deploy[acquisition]')"
        ) from None
    return mda_listeners_connected


class _FrameListener:
    """What the relay calls: its method names match the MDA signals it wants."""

    def __init__(self, proc: LiveProcessor, on_result: OnResult | None, on_error: OnError | None) -> None:
        self.proc, self.on_result, self.on_error = proc, on_result, on_error

    def frameReady(self, image: np.ndarray, event: Any, metadata: Any) -> None:  # noqa: N802 - the signal's name
        submit_and_deliver(self.proc, image, {"event": event, "metadata": metadata}, self.on_result, self.on_error)


class Connection:
    """A live subscription of a :class:`LiveProcessor` to ``core.mda.events``; a context manager."""

    def __init__(self, core: Any, proc: LiveProcessor, on_result: OnResult | None = None,
                 on_error: OnError | None = None) -> None:
        self._connected = _mda_listeners_connected()
        self._events = core.mda.events
        self._listener = _FrameListener(proc, on_result, on_error)
        self._stack: ExitStack | None = None
        self._arm()

    def _arm(self) -> None:
        """A fresh relay thread for the next run (a relay serves one run: it is a thread)."""
        stack = ExitStack()
        stack.enter_context(self._connected(self._listener, mda_events=self._events, asynchronous=True))
        # Connected after the relay's own stop(), so it runs after it; slots connected during an
        # emission are not called by that emission, so the new relay waits for the next run.
        self._events.sequenceFinished.connect(self._rearm)
        stack.callback(self._events.sequenceFinished.disconnect, self._rearm)
        self._stack = stack

    def _rearm(self, *args: Any) -> None:
        self._stack.close()  # joins the finished relay: every frame of the run has been submitted
        self._arm()

    @property
    def connected(self) -> bool:
        return self._stack is not None

    def disconnect(self) -> None:
        """Stop listening; frames of a run in progress are relayed first (waits for the run's end)."""
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


def connect(core: Any, proc: LiveProcessor, on_result: OnResult | None = None,
            on_error: OnError | None = None) -> Connection:
    """Submit every frame of ``core``'s MDA runs to ``proc``; returns the :class:`Connection`."""
    return Connection(core, proc, on_result, on_error)
