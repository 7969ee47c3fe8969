"""The napari plugin: viewport arithmetic, the live loop and the reader without Qt; then the widget
in a real viewer under Xvfb (pytest-xvfb starts it), painting strokes programmatically."""
from __future__ import annotations

import os
import weakref

import numpy as np
import pytest
import tifffile

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.ome_writer import write_ome_pyramid
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.labels import load_scribbles
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles

pytest.importorskip("napari", reason="the napari extra is not installed")
from dinosaw_deploy.napari_plugin import reader as napari_reader  # noqa: E402
from dinosaw_deploy.napari_plugin.session import LIVE_TILE, LiveSession, paste  # noqa: E402
from dinosaw_deploy.napari_plugin.viewport import FALLBACK_SIDE, Generations, paint_region, visible_box  # noqa: E402

needs_display = pytest.mark.skipif(not os.environ.get("DISPLAY"),
                                   reason="no display server: install xvfb (pytest-xvfb starts it)")


@pytest.fixture(scope="module")
def scan():
    image, truth = synthetic_micrograph(300, 420, seed=6)
    return image, truth, synthetic_scribbles(truth, fraction=0.02, seed=6)


# -- without Qt ----------------------------------------------------------------------------------
def test_napari_visible_box_scales_clips_and_falls_back():
    assert visible_box(np.array([[10, 20], [99, 199]]), (1, 1), (500, 500)) == (10, 100, 20, 200)
    assert visible_box(np.array([[0, 10, 20], [0, 99, 199]]), (4, 4), (300, 700)) == (40, 300, 80, 700)
    assert visible_box(np.array([[-5, -5], [9, 9]]), (2.0, 2.0), (100, 100)) == (0, 20, 0, 20)
    side = min(5000, FALLBACK_SIDE)
    assert visible_box(np.zeros((2, 2)), (1, 1), (5000, 40)) == (0, side, 0, 40)  # not drawn yet


def test_napari_paint_region_is_the_image_or_a_square_around_the_view():
    assert paint_region((0, 10, 0, 10), (300, 400), 500) == (0, 300, 0, 400)
    assert paint_region((900, 1100, 50, 90), (40000, 40000), 1000) == (500, 1500, 0, 1000)
    assert paint_region((39990, 40000, 39990, 40000), (40000, 30000), 1000) == (39000, 40000, 29000, 30000)


def test_napari_live_session_predicts_each_tile_once_and_stops_when_stale(scan):
    image, _, labels = scan
    session = LiveSession(image, classifier=ClassifierParams(rounds=5), tile=128, threads=1)
    with pytest.raises(DinosawError, match="at least two classes"):
        list(session.predict((0, 10, 0, 10), session.generations.new()))
    stale = session.generations.new()
    token = session.generations.new()
    assert not session.train(labels, stale) and not session.trained  # superseded before it started
    assert session.train(labels, token)
    previews = dict(session.predict((100, 300, 0, 420), token, preview=True))  # a strided first look
    assert len(previews) == 12 and np.any(session.region((0, 300, 0, 420)))
    tiles = list(session.predict((100, 300, 0, 420), token))
    assert [t for t, _ in tiles] == [(0, 128, 0, 128), (0, 128, 128, 256), (0, 128, 256, 384), (0, 128, 384, 420),
                                     (128, 256, 0, 128), (128, 256, 128, 256), (128, 256, 256, 384),
                                     (128, 256, 384, 420), (256, 300, 0, 128), (256, 300, 128, 256),
                                     (256, 300, 256, 384), (256, 300, 384, 420)][:len(tiles)] and len(tiles) == 12
    reference = Segmenter(classifier=ClassifierParams(rounds=5), tile=128, threads=1).fit(image, labels).predict(image)
    np.testing.assert_array_equal(session.region((0, 300, 0, 420)), reference)  # full labels over the previews
    assert not list(session.predict((100, 300, 0, 420), token, preview=True))  # no preview where labels are full
    calls = []
    session.segmenter.predict_box = lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError)
    assert len(list(session.predict((0, 300, 0, 420), token))) == 12 and not calls  # all from the model's tiles
    newer = session.generations.new()
    assert list(session.predict((0, 300, 0, 420), token)) == [] and Generations().new() == 1 and newer > token
    assert abs(sum(session.fractions().values()) - 1) < 1e-9


def test_napari_paste_copies_only_the_overlap():
    out = np.zeros((4, 6), np.uint8)
    paste(out, (10, 14, 20, 26), (12, 20, 24, 40), np.full((8, 16), 7, np.uint8))
    assert out[2:, 4:].min() == 7 and out[:2].max() == 0 and out[:, :4].max() == 0


def test_napari_reader_levels_are_lazy_views_of_the_file(tmp_path, monkeypatch, scan):
    image = scan[0]
    pyramid = tmp_path / "p.ome.tif"
    write_ome_pyramid(pyramid, np.tile(image, (4, 4)), pixel_size=(5e-9, 5e-9), tile=256)
    levels = napari_reader.scan_levels(pyramid)
    assert len(levels) > 1 and levels[0].shape == (1200, 1680)
    with tifffile.TiffFile(pyramid) as tif:
        truth = [lv.asarray() for lv in tif.series[0].levels]
    for level, expected in zip(levels, truth):
        np.testing.assert_array_equal(level[10:50, 20:90], expected[10:50, 20:90])
    (data, kwargs, kind), = napari_reader.get_reader(str(pyramid))(str(pyramid))
    assert kind == "image" and kwargs["multiscale"] and kwargs["scale"] == pytest.approx((0.005, 0.005))
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, image, tile=(128, 128))
    monkeypatch.setattr(napari_reader, "COARSEST_SIDE", 110)  # no pyramid in the file: strided levels
    levels = napari_reader.scan_levels(flat)
    assert [lv.shape for lv in levels] == [(300, 420), (150, 210), (75, 105)]
    np.testing.assert_array_equal(levels[2][:, :], image[::4, ::4])
    np.testing.assert_array_equal(levels[1][3:9, 5], image[6:18:2, 10])
    monkeypatch.setattr(napari_reader, "BAND_ROWS", 16)  # a strided level reads level 0 band by band
    reads, alive = [], []
    read_region = levels[2].reader.read_region

    def read(y, x, h, w):  # records each band's height; the bands read before the last one must be freed
        alive.append(all(band() is None for band in reads[:-1]))
        band = read_region(y, x, h, w)
        reads.append(weakref.ref(band))
        return band

    monkeypatch.setattr(levels[2].reader, "read_region", read)
    np.testing.assert_array_equal(levels[2][:, :], image[::4, ::4])
    assert len(reads) > 2 and all(alive)  # a 40 000² scan's coarse level once held every band at full size
    for path in (tmp_path / "x.png", tmp_path / "missing.tif"):
        assert napari_reader.get_reader(str(path)) is None
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    assert napari_reader.get_reader(str(tmp_path / "bad.tif")) is None


def test_napari_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("dinosaw-deploy")
    assert {c.id for c in manifest.contributions.commands} == {"dinosaw-deploy.segment_widget",
                                                               "dinosaw-deploy.get_reader"}
    import subprocess
    import sys

    import dinosaw_deploy  # noqa: F401  the runtime itself stays free of Qt and napari
    code = "import dinosaw_deploy, sys; sys.exit(any(m.split('.')[0] in ('napari', 'qtpy', 'PyQt6') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- in a real viewer ----------------------------------------------------------------------------
def _paint(layer, labels: np.ndarray) -> None:
    """One stroke per class, as the brush records them (one undo step and one paint event each)."""
    for value in np.unique(labels[labels > 0]):
        ys, xs = np.nonzero(labels == value)
        layer.data_setitem((ys, xs), int(value))


@pytest.fixture
def live(make_napari_viewer, scan, tmp_path, monkeypatch):
    from dinosaw_deploy.napari_plugin import widget as widget_module

    errors = []
    monkeypatch.setattr(widget_module, "show_error", errors.append)
    image = scan[0]
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, image, tile=(128, 128))
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin="dinosaw-deploy")
    widget = widget_module.SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.start()
    widget.session.segmenter.classifier = ClassifierParams(rounds=8)
    widget.session.segmenter.threads = 2
    return viewer, widget, errors, path


@needs_display
def test_napari_painting_shows_the_labels_of_the_visible_region(live, scan, tmp_path):
    viewer, widget, errors, _ = live
    image, truth, labels = scan
    viewer.reset_view()
    _paint(widget.scribbles, labels)
    widget.wait()
    assert not errors and widget._shown is not None, widget.status.text()
    box, shown = widget._shown
    reference = Segmenter(classifier=ClassifierParams(rounds=8), tile=LIVE_TILE, threads=2).fit(image, labels)
    reference = reference.predict(image)
    np.testing.assert_array_equal(widget.prediction.data, reference[box[0]:box[1], box[2]:box[3]])
    assert box == (0, 300, 0, 420)  # the whole image is in view
    bank, banks_run = widget.session.segmenter.bank, []
    region = bank.region
    bank.region = lambda *args: banks_run.append(args[1]) or region(*args)
    before, at_start, show = widget.prediction.data.copy(), [], widget._show

    def spy(item):
        show(item)
        if item[2] == "start":
            at_start.append(widget.prediction.data.copy())

    widget._show = spy
    more = (synthetic_scribbles(truth, fraction=0.01, seed=7) == 1) & (labels == 0)
    _paint(widget.scribbles, more.astype(np.uint8))  # more strokes of class 1 where features are cached
    widget.wait()
    assert not banks_run  # retrained and predicted from cached features
    assert len(at_start) == 1
    np.testing.assert_array_equal(at_start[0], before)  # the old labels stay shown while the new ones come
    reference = Segmenter(classifier=ClassifierParams(rounds=8), tile=LIVE_TILE, threads=2)
    reference = reference.fit(image, np.where(more, 1, labels).astype(np.uint8)).predict(image)
    np.testing.assert_array_equal(widget.prediction.data, reference)
    viewer.scene.camera.center = (0, 75, 105)
    viewer.scene.camera.zoom *= 4  # pan and zoom: the new view is predicted from the model's tiles
    widget.wait()
    new_box, _ = widget._shown
    assert new_box != box and new_box[1] - new_box[0] < 300
    np.testing.assert_array_equal(widget.prediction.data, reference[new_box[0]:new_box[1], new_box[2]:new_box[3]])
    shot = viewer.screenshot(str(tmp_path / "napari.png"), canvas_only=True)
    colours = {tuple(c) for c in shot[..., :3].reshape(-1, 3)[::97]}
    assert len(colours) > 50  # the micrograph and the class colours, not a blank canvas
    if os.environ.get("DINOSAW_SCREENSHOT"):  # the README's screenshot: DINOSAW_SCREENSHOT=docs/interactive.png
        viewer.reset_view()
        widget.wait()
        viewer.screenshot(os.environ["DINOSAW_SCREENSHOT"], canvas_only=False)


@needs_display
def test_napari_saves_what_the_cli_reads_and_segments_the_whole_scan(live, scan, tmp_path):
    from click.testing import CliRunner

    from dinosaw_deploy.cli import main

    viewer, widget, errors, path = live
    image, _, labels = scan
    widget.normalize.setCurrentText("zscore")  # the intensity rule chosen in the widget travels with the model
    widget.start()
    _paint(widget.scribbles, labels)
    widget.wait()
    marks = widget.save_scribbles(tmp_path / "marks.png")
    assert load_scribbles(marks).counts().sum() == np.count_nonzero(labels)
    model = widget.save_model(tmp_path / "live.dsw")
    assert Segmenter.load(model).normalize == "zscore"
    widget.segment_whole_scan(tmp_path / "whole.ome.tif")
    widget.wait()
    assert not errors, errors
    result = CliRunner().invoke(main, ["apply", str(path), "--model", str(model), "-o", str(tmp_path / "cli.ome.tif")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "whole.ome.tif"), tifffile.imread(tmp_path / "cli.ome.tif"))
    assert viewer.layers[-1].name == "whole.ome.tif"
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, synthetic_micrograph(200, 200, seed=8)[0])
    widget.apply_to_files([other], tmp_path / "batch")
    widget.wait()
    assert not errors and (tmp_path / "batch" / "other.ome.tif").is_file()


@needs_display
def test_napari_errors_are_notifications_and_the_viewer_stays_usable(live, scan, tmp_path):
    viewer, widget, errors, _ = live
    widget._ask(widget.segment_whole_scan, lambda: str(tmp_path / "x.ome.tif"))  # nothing trained yet
    assert errors == ["paint scribbles of at least two classes first"]
    widget._ask(widget.save_scribbles, lambda: str(tmp_path / "s.png"))
    assert "no labelled pixels" in errors[-1] and not (tmp_path / "s.png").exists()
    widget.use_vit.setChecked(True)
    widget.engine.setText(str(tmp_path / "nothing.onnx"))
    session = widget.session
    widget.start()
    assert "nothing.onnx" in errors[-1] and widget.session is session  # the old session is kept
    widget.use_vit.setChecked(False)
    _paint(widget.scribbles, scan[2])
    widget.wait()
    assert widget._shown is not None and len(errors) == 3
    widget._ask(widget.save_scribbles, lambda: str(tmp_path / "s.bmp"))
    assert "saved as .png, .tif or .tiff" in errors[-1]
    segmenter = widget.session.segmenter
    for raised, shown in ((DinosawError("engine refused"), "engine refused"), (ValueError("boom"),
                                                                             "unexpected ValueError: boom")):
        def failing(*args, exc=raised, **kwargs):
            raise exc

        segmenter.predict_box = failing  # a worker that fails: one notification, and the viewer goes on
        widget.session._tiles.clear()
        widget.refresh()
        widget.wait()
        assert errors[-1] == shown and widget.status.text() == f"error: {shown}"
    del segmenter.predict_box
    _paint(widget.scribbles, np.roll(scan[2], 2, axis=1))  # a new stroke works as before
    widget.wait()
    assert widget.status.text().startswith("labels of") and errors[-1] == "unexpected ValueError: boom"


@needs_display
def test_napari_paints_a_region_of_a_scan_too_large_for_one_layer(live, scan, tmp_path, monkeypatch):
    from dinosaw_deploy.napari_plugin import widget as widget_module

    viewer, widget, errors, _ = live
    image, _, labels = scan
    monkeypatch.setattr(widget_module, "PAINT_SIDE", 160)  # as if the scan were larger than 8192² px
    viewer.scene.camera.center = (0, 150, 300)
    viewer.scene.camera.zoom *= 3
    widget.wait()
    widget.start()
    widget.session.segmenter.classifier = ClassifierParams(rounds=8)
    y0, y1, x0, x1 = widget.paint_box
    assert (y1 - y0, x1 - x0) == (160, 160) and widget.scribbles.data.shape == (160, 160)
    assert tuple(widget.scribbles.translate) == (y0, x0)
    _paint(widget.scribbles, labels[y0:y1, x0:x1])
    widget.wait()
    assert not errors and widget._shown is not None
    saved = load_scribbles(widget.save_scribbles(tmp_path / "region.tif")).to_image()
    assert saved.shape == image.shape and np.array_equal(saved[y0:y1, x0:x1] > 0, labels[y0:y1, x0:x1] > 0)
    assert not saved[:y0].any() and not saved[:, :x0].any()
