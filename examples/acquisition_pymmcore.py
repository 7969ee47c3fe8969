"""Live segmentation inside a pymmcore-plus acquisition, with event-driven follow-ups.

    pip install 'dinosaw-deploy[acquisition]'
    python examples/acquisition_pymmcore.py [--specimen 1536] [--field 256] [--grid 4] [--threshold 0.02]

No microscope and no Micro-Manager device adapters needed: pymmcore-plus's ``UniMMCore`` runs a real
MDA with Python devices.

1. a synthetic SEM specimen (:func:`dinosaw_deploy.synthetic.synthetic_micrograph`) sits under a Python
   XY stage; a Python "SEM camera" serves the field of view under the stage (``Magnification`` 2 =
   a finer field: half the width, twice the pixels per micron);
2. a classical Segmenter is trained on scribbles of one field (a real script loads its ``.dsw``);
3. an MDA surveys a grid of positions; :func:`dinosaw_deploy.live.pymmcore.connect` segments every frame
   on a worker thread while the acquisition goes on;
4. event-driven: where a surveyed field holds more than ``--threshold`` of the chosen class (``class 3``
   = the specimen's pores), the result callback queues a follow-up event (a finer field at that
   position) into the queue the MDA runs from (``iter(queue.get, STOP)``, pymmcore-plus's
   event-driven pattern). The run ends when every frame has its result and nothing more is queued.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from queue import Queue
from typing import Any

import numpy as np
from pymmcore_plus.experimental.unicore import SimpleCameraDevice, UniMMCore, XYStageDevice, pymm_property
from useq import MDAEvent

from dinosaw_deploy import DinosawError
from dinosaw_deploy.live import FrameResult, LiveProcessor
from dinosaw_deploy.live.pymmcore import connect
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles

CAMERA, STAGE = "SEM", "Stage"
STOP = object()  # ends the MDA's event iterator


class SemStage(XYStageDevice):
    """A Python XY stage: it only remembers where it is (microns)."""

    def __init__(self) -> None:
        super().__init__()
        self._xy = (0.0, 0.0)

    def set_position_um(self, x: float, y: float) -> None:
        self._xy = (float(x), float(y))

    def get_position_um(self) -> tuple[float, float]:
        return self._xy

    def set_origin_x(self) -> None:
        self._xy = (0.0, self._xy[1])

    def set_origin_y(self) -> None:
        self._xy = (self._xy[0], 0.0)

    def home(self) -> None:
        self._xy = (0.0, 0.0)

    def stop(self) -> None:
        pass


class SemCamera(SimpleCameraDevice):
    """A Python camera serving the ``field`` x ``field`` px view of ``specimen`` centred under the
    stage (1 px = 1 um at magnification 1; beyond the specimen's edge the view is clamped)."""

    def __init__(self, specimen: np.ndarray, stage: SemStage, field: int) -> None:
        super().__init__()
        self.specimen, self.stage, self.field = specimen, stage, field
        self._exposure, self._magnification = 10.0, 1

    def sensor_shape(self) -> tuple[int, int]:
        return (self.field, self.field)

    def dtype(self) -> np.dtype:
        return self.specimen.dtype

    def get_exposure(self) -> float:
        return self._exposure

    def set_exposure(self, exposure: float) -> None:
        self._exposure = float(exposure)

    @pymm_property(allowed_values=[1, 2])
    def magnification(self) -> int:
        return self._magnification

    @magnification.setter
    def magnification(self, value: int) -> None:
        self._magnification = int(value)

    def view(self, x_um: float, y_um: float, magnification: int = 1) -> np.ndarray:
        """The frame this camera takes at stage position (x, y) and ``magnification``."""
        side = self.field // magnification
        height, width = self.specimen.shape[:2]
        y0 = int(np.clip(round(y_um) - side // 2, 0, height - side))
        x0 = int(np.clip(round(x_um) - side // 2, 0, width - side))
        crop = self.specimen[y0 : y0 + side, x0 : x0 + side]
        return np.repeat(np.repeat(crop, magnification, axis=0), magnification, axis=1)

    def snap(self, buffer: np.ndarray) -> dict[str, Any]:
        x, y = self.stage.get_position_um()
        buffer[:] = self.view(x, y, self._magnification)
        return {"magnification": self._magnification}


def make_core(specimen: np.ndarray, field: int) -> tuple[UniMMCore, SemCamera]:
    """A UniMMCore with the Python camera and stage loaded and selected."""
    core = UniMMCore(mm_path=tempfile.gettempdir())  # no Micro-Manager installation to look for
    stage = SemStage()
    camera = SemCamera(specimen, stage, field)
    core.loadPyDevice(STAGE, stage)
    core.loadPyDevice(CAMERA, camera)
    core.initializeAllDevices()
    core.setXYStageDevice(STAGE)
    core.setCameraDevice(CAMERA)
    core.setAutoShutter(False)  # no shutter device
    return core, camera


@dataclass
class EventDriven:
    """The result callback that steers the run: a follow-up where ``class_name`` exceeds ``threshold``."""

    class_name: str
    threshold: float
    queue: Queue = field(default_factory=Queue)
    results: list[FrameResult] = field(default_factory=list)
    errors: list[tuple[BaseException, Any]] = field(default_factory=list)
    _pending: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, event: MDAEvent) -> None:
        with self._lock:
            self._pending += 1
        self.queue.put(event)

    def _settled(self) -> None:
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last:
            self.queue.put(STOP)

    def on_result(self, result: FrameResult) -> None:
        try:
            self.results.append(result)
            event = result.meta["event"]
            if event.metadata.get("kind") == "survey" and result.class_fractions[self.class_name] > self.threshold:
                n = event.metadata["n"]
                self.put(MDAEvent(x_pos=event.x_pos, y_pos=event.y_pos, properties=[(CAMERA, "magnification", 2)],
                                  metadata={"kind": "detail", "of": n, "n": n + 10_000}))
        finally:  # whatever happens here, this frame is settled (else the run would wait for it forever)
            self._settled()

    def on_error(self, exc: BaseException, meta: Any) -> None:
        self.errors.append((exc, meta))
        self._settled()


def survey(positions: list[tuple[float, float]]) -> list[MDAEvent]:
    return [MDAEvent(x_pos=x, y_pos=y, properties=[(CAMERA, "magnification", 1)], metadata={"kind": "survey", "n": n})
            for n, (x, y) in enumerate(positions)]


def run_acquisition(core: UniMMCore, proc: LiveProcessor, positions: list[tuple[float, float]],
                    class_name: str, threshold: float) -> EventDriven:
    """Survey ``positions``, segmenting live and following up on fields rich in ``class_name``."""
    names = [c.name for c in proc.target.label_classes]
    if class_name not in names:
        raise DinosawError(f"no class {class_name!r} in the model (it has {', '.join(names)})")
    steer = EventDriven(class_name, threshold)
    for event in survey(positions):
        steer.put(event)
    with connect(core, proc, on_result=steer.on_result, on_error=steer.on_error):
        core.mda.run(iter(steer.queue.get, STOP))
    return steer


def grid_positions(specimen_px: int, field: int, n: int) -> list[tuple[float, float]]:
    centres = np.linspace(field / 2, specimen_px - field / 2, n)
    return [(float(x), float(y)) for y in centres for x in centres]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specimen", type=int, default=1536, help="side of the synthetic specimen, px (= um)")
    parser.add_argument("--field", type=int, default=256, help="camera field of view, px")
    parser.add_argument("--grid", type=int, default=4, help="survey an N x N grid of positions")
    parser.add_argument("--class-name", default="class 3", help="follow up where this class is frequent")
    parser.add_argument("--threshold", type=float, default=0.02, help="class fraction that triggers a follow-up")
    args = parser.parse_args()

    specimen, truth = synthetic_micrograph(args.specimen, args.specimen, seed=5)
    core, camera = make_core(specimen, args.field)
    train = camera.view(args.field / 2, args.field / 2)
    train_truth = truth[: args.field, : args.field]
    seg = Segmenter(classifier=ClassifierParams(rounds=30), tile=256).fit(
        train, synthetic_scribbles(train_truth, fraction=0.03, seed=5))
    print(f"1-2. specimen {args.specimen}x{args.specimen} px, field {args.field} px; trained classes "
          f"{[c.name for c in seg.label_classes]}")

    with LiveProcessor(seg, queue_size=4, on_full="block", warmup_shape=(args.field, args.field)) as proc:
        steer = run_acquisition(core, proc, grid_positions(args.specimen, args.field, args.grid),
                                args.class_name, args.threshold)
        stats = proc.stats()
    print(f"3-4. {len(steer.results)} frames segmented live, {len(steer.errors)} failed")
    for res in steer.results:
        event = res.meta["event"]
        fractions = ", ".join(f"{k} {v:.3f}" for k, v in res.class_fractions.items())
        print(f"   {event.metadata['kind']:6s} at ({event.x_pos:6.0f}, {event.y_pos:6.0f}) um: {fractions}  "
              f"[{res.timings['total']:.0f} ms]")
    follow_ups = sum(r.meta["event"].metadata["kind"] == "detail" for r in steer.results)
    total = stats["latency_ms"]["total"]
    print(f"   {follow_ups} follow-up fields queued by the callback; latency p50 {total['p50']:.0f} ms, "
          f"p95 {total['p95']:.0f} ms")


if __name__ == "__main__":
    try:
        main()
    except DinosawError as exc:
        sys.exit(f"Error: {exc}")
