"""Live frames: segment (or featurise) frames from an acquisition loop on a worker thread.

:class:`LiveProcessor` is the engine room; :mod:`~dinosaw_deploy.live.callbacks` adapts it to plain
frame callbacks (pycro-manager's ``image_process_fn``), :mod:`~dinosaw_deploy.live.pymmcore` to
pymmcore-plus MDA events (extra ``acquisition``).
"""
from dinosaw_deploy.live.callbacks import image_process_fn
from dinosaw_deploy.live.processor import FrameDropped, FrameError, FrameResult, LiveProcessor

__all__ = ["FrameDropped", "FrameError", "FrameResult", "LiveProcessor", "image_process_fn"]
