"""The dock widget: paint scribbles, see the visible region's labels after each stroke, save the model,
segment the whole scan or apply the model to files.

Everything slow runs in napari worker threads; layers are only touched here, on the main thread,
when a worker yields. Each stroke or view change starts a new generation: older jobs stop at their
next tile, and what they would have shown is dropped.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.box import Box
from dinosaw_deploy.image.intensity import DEFAULT_NORMALIZE, NORMALIZATIONS
from dinosaw_deploy.segment.labels import Scribbles, save_scribbles, scribbles_from_array

from .session import LiveSession, paste
from .viewport import box_pixels, paint_region, visible_box

MAX_LIVE_PIXELS = 3000 * 3000  # a larger view asks to zoom in instead of predicting it all
PAINT_SIDE = 8192  # on larger images the scribbles layer (in memory, uint8) covers a region this big
PAINT_DEBOUNCE_MS, VIEW_DEBOUNCE_MS = 150, 150  # quiet after the last paint event of a stroke / view change
REDRAW_S = 0.5  # while tiles arrive, the prediction layer is redrawn at most this often


class _Cancelled(DinosawError):
    pass


class _Progress(QObject):
    """Carries (done, total) from a worker thread to the main thread (a queued Qt signal)."""

    changed = Signal(int, int)


class SegmentWidget(QWidget):
    """Interactive scribble segmentation of one image layer (see the module notes)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session: LiveSession | None = None
        self.image_layer = self.scribbles = self.prediction = None
        self.paint_box: Box | None = None  # the level-0 box the scribbles layer covers
        self._shown: tuple[Box, np.ndarray] | None = None  # the prediction layer's box and buffer
        self._drawn = 0.0  # when the prediction layer was last redrawn
        self.previewed = 0.0  # when the view was last fully shown (strided first look), for latency figures
        self._workers: list[Any] = []
        self._cancel = False
        self._bar = None
        self._progress = _Progress()
        self._progress.changed.connect(self._on_progress)
        self._build()
        self._paint_timer = self._timer(PAINT_DEBOUNCE_MS, self.retrain)
        self._view_timer = self._timer(VIEW_DEBOUNCE_MS, self.refresh)
        self.viewer.layers.events.inserted.connect(self._list_images)
        self.viewer.layers.events.removed.connect(self._list_images)
        camera = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera  # napari < 0.9
        camera.events.center.connect(self._view_changed)
        camera.events.zoom.connect(self._view_changed)
        self._list_images()

    # -- layout ---------------------------------------------------------------------------
    def _build(self) -> None:
        self.image_choice = QComboBox()
        self.engine = QLineEdit()
        self.engine.setPlaceholderText("engine .onnx / .plan (for ViT features)")
        browse = QPushButton("…")
        browse.clicked.connect(self._browse_engine)
        engine_row = QHBoxLayout()
        engine_row.addWidget(self.engine)
        engine_row.addWidget(browse)
        self.use_vit = QCheckBox("ViT features")
        self.normalize = QComboBox()
        self.normalize.addItems(NORMALIZATIONS)
        self.normalize.setCurrentText(DEFAULT_NORMALIZE)
        self.normalize.setToolTip("How the image's intensities map to [0, 1] (stored in the saved model): "
                                  "percentile / minmax / zscore stretch each scan, dtype keeps the pixel type's range")
        self.live = QCheckBox("live prediction of the visible region")
        self.live.setChecked(True)
        self.status = QLabel("choose an image, then start")
        self.status.setWordWrap(True)
        self.fractions = QLabel("")
        form = QFormLayout()
        form.addRow("image", self.image_choice)
        form.addRow("engine", engine_row)
        form.addRow("intensities", self.normalize)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.use_vit)
        for text, slot in (("Start painting", self.start), ("Save scribbles…", self._ask_save_scribbles),
                           ("Save model…", self._ask_save_model), ("Segment whole scan…", self._ask_segment),
                           ("Apply to files…", self._ask_apply), ("Cancel", self.cancel)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            layout.addWidget(button)
            if text == "Start painting":
                layout.addWidget(self.live)
        layout.addWidget(self.status)
        layout.addWidget(self.fractions)
        layout.addStretch()

    def _timer(self, ms: int, slot) -> QTimer:
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.setInterval(ms)
        timer.timeout.connect(slot)
        return timer

    def _list_images(self, *_: Any) -> None:
        current = self.image_choice.currentText()
        self.image_choice.clear()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.image_choice.addItems(names)
        if current in names:
            self.image_choice.setCurrentText(current)

    def _browse_engine(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Engine", "", "Engines (*.onnx *.plan)")
        if path:
            self.engine.setText(path)
            self.use_vit.setChecked(True)

    # -- the live loop --------------------------------------------------------------------
    def start(self) -> None:
        """Prepare the chosen image and add the scribbles and prediction layers."""
        try:
            self._start()
        except DinosawError as exc:
            show_error(str(exc))

    def _start(self) -> None:
        name = self.image_choice.currentText()
        if not name:
            raise DinosawError("open an image first")
        layer = self.viewer.layers[name]
        base = layer.data[0] if layer.multiscale else layer.data
        shape = tuple(int(v) for v in base.shape[:2])
        extractor = None
        if self.use_vit.isChecked():
            from dinosaw_deploy.engine.extractor import FeatureExtractor

            if not self.engine.text():
                raise DinosawError("ViT features need an engine: choose its .onnx or .plan")
            extractor = FeatureExtractor(self.engine.text())
        source = getattr(base, "reader", None)  # a scan opened by our reader: read lazily, tile by tile
        if source is None or extractor is not None:  # ViT patch features are computed on an in-memory image
            source = np.asarray(base)
        self.session = LiveSession(source, extractor=extractor, normalize=self.normalize.currentText())
        self.image_layer = layer
        for old in (self.scribbles, self.prediction):
            if old is not None and old in self.viewer.layers:
                self.viewer.layers.remove(old)
        self.prediction = self.viewer.add_labels(np.zeros((1, 1), np.uint8), name="prediction", opacity=0.45,
                                                 scale=layer.scale[-2:])
        self.paint_box = paint_region(self.view_box(), shape, PAINT_SIDE)
        y0, y1, x0, x1 = self.paint_box
        scale = self.prediction.scale
        self.scribbles = self.viewer.add_labels(np.zeros((y1 - y0, x1 - x0), np.uint8), name="scribbles",
                                                scale=scale, translate=(y0 * scale[0], x0 * scale[1]))
        self.scribbles.brush_size = max(3, shape[1] // 300)
        self.scribbles.mode = "paint"
        self.scribbles.selected_label = 1
        self.scribbles.events.paint.connect(lambda *_: self._paint_timer.start())
        self._shown = None
        self.viewer.layers.selection.active = self.scribbles
        where = "" if self.paint_box == (0, shape[0], 0, shape[1]) else (
            f" inside y {y0}..{y1}, x {x0}..{x1} (the scan is larger than {PAINT_SIDE}² px; press Start painting "
            "again elsewhere to move the region: the scribbles start over)")
        self.status.setText(f"paint at least two classes (label 1, 2, …){where}; the prediction follows each stroke")

    def _view_changed(self, *_: Any) -> None:
        if self.session is not None and self.session.trained and self.live.isChecked():
            self._view_timer.start()

    def view_box(self) -> Box:
        """The level-0 box the image layer shows now."""
        layer = self.image_layer
        factors = layer.downsample_factors[layer.data_level] if layer.multiscale else (1.0, 1.0)
        return visible_box(layer.corner_pixels, factors, self.session.prepared.shape)

    def retrain(self) -> None:
        """Train on the scribbles as they are now, then predict the visible region (in a worker)."""
        if self.session is None:
            return
        data = self.scribbles.data
        rows = np.flatnonzero(data.any(axis=1))  # a snapshot of the rows that hold scribbles (they are sparse:
        painted = data[rows]  # the layer covers up to PAINT_SIDE² px); reading their scribbles is the worker's
        session, offset = self.session, self.paint_box[::2]
        token = session.generations.new()
        box = self.view_box()
        self.status.setText("training …")

        def job():
            if len(np.unique(painted[painted > 0])) < 2:
                yield token, box, "too few", None, None
                return
            marks = _in_image(scribbles_from_array(painted), offset, session.prepared.shape, rows)
            if not session.train(marks, token):
                return
            yield from self._predict_job(box, token)

        self._run(job)

    def refresh(self) -> None:
        """Predict the tiles of the visible region the current model has not predicted yet (in a worker)."""
        if self.session is None or not self.session.trained:
            return
        token = self.session.generations.new()
        box = self.view_box()
        self._run(self._predict_job, box, token)

    def _predict_job(self, box: Box, token: int):
        """Yields (token, box, what, tile, labels): ``too large`` (or, from a retrain, ``too few`` classes), or
        ``start``, each strided ``tile`` of a first look, ``preview`` (all of the view shown), each
        full-resolution ``tile``, ``done``."""
        if box_pixels(box) > MAX_LIVE_PIXELS:
            yield token, box, "too large", None, None
            return
        yield token, box, "start", None, None
        for tile, labels in self.session.predict(box, token, preview=True):
            yield token, box, "tile", tile, labels
        yield token, box, "preview", None, None
        for tile, labels in self.session.predict(box, token):
            yield token, box, "tile", tile, labels
        yield token, box, "done", None, None

    def _run(self, job, *args) -> None:
        worker = create_worker(job, *args, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._show)
        worker.errored.connect(self._failed)
        worker.finished.connect(lambda: self._workers.remove(worker) if worker in self._workers else None)
        self._workers.append(worker)
        worker.start()

    def _show(self, item: tuple) -> None:
        token, box, what, tile, labels = item
        if self.session is None or not self.session.generations.is_current(token):
            return
        if what == "too few":
            self.status.setText("paint at least two classes to see a prediction")
        elif what == "too large":
            self.status.setText(f"zoom in to see live labels (the view has {box_pixels(box):.3g} px; live "
                                f"prediction covers up to {MAX_LIVE_PIXELS:.3g})")
        elif what == "start":
            if self._shown is None or self._shown[0] != box:  # a new view: the tiles the model has labelled so far
                y0, y1, x0, x1 = box
                self._shown = (box, self.session.region(box))
                self.prediction.data = self._shown[1]
                self.prediction.translate = (y0 * self.prediction.scale[0], x0 * self.prediction.scale[1])
            # the same view after a retrain: its labels stay shown until the new ones replace them
            self._drawn = time.monotonic()
            self.status.setText("predicting the visible region …")
        elif what == "tile":
            paste(self._shown[1], self._shown[0], tile, labels)
            if time.monotonic() - self._drawn > REDRAW_S:  # redrawing after every tile would slow the work down
                self.prediction.refresh()
                self._drawn = time.monotonic()
        elif what == "preview":
            self.prediction.refresh()
            self._drawn = self.previewed = time.monotonic()
            self.status.setText("refining the visible region …")
        else:
            self.prediction.refresh()
            (y0, y1, x0, x1), _ = self._shown
            self.status.setText(f"labels of {y1 - y0}x{x1 - x0} px shown")
            self.fractions.setText(", ".join(f"{name} {share:.1%}" for name, share in self.session.fractions().items()))

    def _failed(self, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, DinosawError) else f"unexpected {type(exc).__name__}: {exc}"
        self.status.setText(f"error: {message}")
        show_error(message)

    def wait(self, timeout_ms: int = 60_000) -> None:
        """Block (processing Qt events) until every worker has finished: for scripts and tests.

        The loop sleeps between events, as the application's own event loop does: polling
        ``processEvents`` would keep one core and the GIL busy beside the workers."""
        from qtpy.QtCore import QEventLoop, QTimer

        loop, poll = QEventLoop(), QTimer()
        deadline = time.monotonic() + timeout_ms / 1e3

        def check() -> None:
            if not (self._workers or self._paint_timer.isActive() or self._view_timer.isActive()) \
                    or time.monotonic() > deadline:
                loop.quit()

        poll.setInterval(10)
        poll.timeout.connect(check)
        poll.start()
        loop.exec()
        poll.stop()

    # -- from the loop to the batch ---------------------------------------------------------
    def _trained(self):
        if self.session is None or not self.session.trained:
            raise DinosawError("paint scribbles of at least two classes first")
        return self.session.segmenter

    def _image_path(self) -> Path:
        path = self.image_layer.metadata.get("path") or self.image_layer.source.path
        if not path:
            raise DinosawError(f"{self.image_layer.name} was not opened from a file; open the scan itself "
                               "(File > Open) to segment all of it")
        return Path(path)

    def save_scribbles(self, path: str | Path) -> Path:
        """The scribbles as a label file of the image's size that ``segment --labels`` reads (PNG or TIFF)."""
        marks = _in_image(scribbles_from_array(np.asarray(self.scribbles.data)), self.paint_box[::2],
                          self.session.prepared.shape)
        return save_scribbles(path, marks.to_image())

    def save_model(self, path: str | Path) -> Path:
        """The trained model as a ``.dsw`` bundle (what ``dinosaw-deploy apply`` reads)."""
        return self._trained().save(path)

    def segment_whole_scan(self, output: str | Path) -> None:
        """Save the model beside ``output`` (``<stem>.dsw``), apply it to the whole scan in a worker,
        then open the result as a labels layer."""
        from dinosaw_deploy.segment.job import output_paths
        from dinosaw_deploy.segment.run import RunOptions, apply_scan, scan_stem

        seg, image, output = self._trained(), self._image_path(), Path(output)
        output_paths(output, False)  # a name we can write, or a clear error now
        model = self.save_model(output.with_name(scan_stem(output) + ".dsw"))

        def job():
            apply_scan(image, model, output, extractor=seg.extractor,
                       run=RunOptions(overwrite=True, progress=self._report))
            return output

        self._batch(job, "segmenting the whole scan", self._open_result)

    def apply_to_files(self, images: list[str | Path], folder: str | Path) -> None:
        """Apply the trained model to ``images``, writing ``<folder>/<name>.ome.tif`` each."""
        from dinosaw_deploy.segment.run import RunOptions, apply_scans

        seg, folder = self._trained(), Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = self.save_model(folder / "model.dsw")

        def job():
            apply_scans(images, model, folder, extractor=seg.extractor, run=RunOptions(progress=self._report))
            return folder

        self._batch(job, f"applying the model to {len(images)} files",
                    lambda out: show_info(f"wrote the labels of {len(images)} files to {out}"))

    def cancel(self) -> None:
        """Stop the running batch job at its next tile (a rerun resumes it) and any live job."""
        self._cancel = True
        if self.session is not None:
            self.session.generations.new()

    def _report(self, done: int, total: int) -> None:  # worker thread
        if self._cancel:
            raise _Cancelled("cancelled; run it again to resume where it stopped")
        self._progress.changed.emit(done, total)

    def _on_progress(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()

    def _batch(self, job, what: str, done) -> None:
        self._cancel = False
        self._bar = napari_progress(total=0, desc=what)
        worker = create_worker(job, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(done)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._batch_finished)
        worker.finished.connect(lambda: self._workers.remove(worker) if worker in self._workers else None)
        self._workers.append(worker)
        self.status.setText(f"{what} …")
        worker.start()

    def _batch_finished(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _open_result(self, output: Path) -> None:
        from .reader import scan_levels

        levels = scan_levels(output)
        self.viewer.add_labels(levels if len(levels) > 1 else levels[0], multiscale=len(levels) > 1,
                               name=output.name, scale=self.image_layer.scale[-2:], opacity=0.5)
        self.status.setText(f"wrote {output}")

    # -- dialogs ----------------------------------------------------------------------------
    def _ask(self, action, *questions) -> None:
        try:
            answers = [q() for q in questions]
            if all(answers):
                action(*answers)
        except DinosawError as exc:
            show_error(str(exc))

    def _ask_save_scribbles(self) -> None:
        self._ask(self.save_scribbles, lambda: QFileDialog.getSaveFileName(self, "Scribbles", "scribbles.png",
                                                                           "Label images (*.png *.tif)")[0])

    def _ask_save_model(self) -> None:
        self._ask(self.save_model, lambda: QFileDialog.getSaveFileName(self, "Model", "model.dsw",
                                                                       "Models (*.dsw)")[0])

    def _ask_segment(self) -> None:
        self._ask(self.segment_whole_scan, lambda: QFileDialog.getSaveFileName(
            self, "Labels of the whole scan", "labels.ome.tif", "OME-TIFF (*.ome.tif);;OME-Zarr (*.ome.zarr)")[0])

    def _ask_apply(self) -> None:
        self._ask(self.apply_to_files, lambda: QFileDialog.getOpenFileNames(self, "Scans", "", "TIFF (*.tif *.tiff)")[0],
                  lambda: QFileDialog.getExistingDirectory(self, "Output folder"))


def _in_image(marks: Scribbles, offset: tuple[int, int], shape: tuple[int, int],
              rows: np.ndarray | None = None) -> Scribbles:
    """Scribbles of the painted region (whose corner is ``offset``; ``rows``: the region's rows that ``marks``'
    rows are, when they are a subset) in the coordinates of an image of ``shape``."""
    ys = marks.ys if rows is None else rows[marks.ys].astype(marks.ys.dtype)
    return replace(marks, shape=shape, ys=ys + offset[0], xs=marks.xs + offset[1])
