"""A real pymmcore-plus MDA (UniMMCore, Python camera and stage) segmented live through connect()."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymmcore_plus")

from dinosaw_deploy.live import FrameError, LiveProcessor  # noqa: E402
from dinosaw_deploy.live.pymmcore import connect  # noqa: E402
from dinosaw_deploy.segment.classifier import ClassifierParams  # noqa: E402
from dinosaw_deploy.segment.segmenter import Segmenter  # noqa: E402
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "acquisition_pymmcore.py"
FIELD = 96


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("acquisition_pymmcore", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def rig(example):
    specimen, truth = synthetic_micrograph(384, 384, seed=7)
    seg = Segmenter(classifier=ClassifierParams(rounds=8), tile=64, threads=2).fit(
        specimen, synthetic_scribbles(truth, fraction=0.02, seed=7))
    assert [c.name for c in seg.label_classes] == ["class 1", "class 2", "class 3"]
    core, camera = example.make_core(specimen, FIELD)
    return core, camera, seg


def collect_frames(core) -> dict[int, np.ndarray]:
    """What the camera delivered, by the event's number, through a plain synchronous listener."""
    frames: dict[int, np.ndarray] = {}
    core.mda.events.frameReady.connect(lambda img, event: frames.__setitem__(event.metadata["n"], img.copy()))
    return frames


def test_event_driven_mda_segments_every_frame_live(example, rig):
    core, camera, seg = rig
    positions = example.grid_positions(384, FIELD, 3)
    fractions = [seg.predict(camera.view(x, y)).__eq__(3).mean() for x, y in positions]
    threshold = float(np.median(fractions))
    frames = collect_frames(core)
    with LiveProcessor(seg, queue_size=2, on_full="block") as proc:
        steer = example.run_acquisition(core, proc, positions, "class 3", threshold)
    assert not steer.errors
    survey = [r for r in steer.results if r.meta["event"].metadata["kind"] == "survey"]
    details = [r for r in steer.results if r.meta["event"].metadata["kind"] == "detail"]
    assert sorted(r.meta["event"].metadata["n"] for r in survey) == list(range(len(positions)))
    expected_follow_ups = {n for n, f in enumerate(fractions) if f > threshold}
    assert {r.meta["event"].metadata["of"] for r in details} == expected_follow_ups
    assert 0 < len(expected_follow_ups) < len(positions)
    assert len(frames) == len(steer.results)
    for res in steer.results:
        event = res.meta["event"]
        frame = frames[event.metadata["n"]]
        mag = 2 if event.metadata["kind"] == "detail" else 1
        np.testing.assert_array_equal(frame, camera.view(event.x_pos, event.y_pos, mag))
        np.testing.assert_array_equal(res.labels, seg.predict(frame))


def test_a_connection_serves_several_runs_until_disconnected(example, rig):
    core, camera, seg = rig
    positions = example.grid_positions(384, FIELD, 2)
    got = []
    with LiveProcessor(seg, on_full="block") as proc:
        handle = connect(core, proc, on_result=got.append)
        for _ in range(2):
            core.mda.run(example.survey(positions))
        handle.disconnect()
        assert not handle.connected
        core.mda.run(example.survey(positions))
    assert len(got) == 2 * len(positions)
    assert proc.stats()["done"] == 2 * len(positions)


def test_failing_frames_never_stop_the_acquisition(example, rig):
    core, camera, seg = rig
    positions = example.grid_positions(384, FIELD, 2)
    with LiveProcessor(seg, crop_bottom=FIELD) as proc:  # every frame is empty after the crop
        steer = example.run_acquisition(core, proc, positions, "class 3", 0.0)
    assert not steer.results and len(steer.errors) == len(positions)
    assert all(isinstance(exc, FrameError) and "empty after cropping" in str(exc) for exc, _ in steer.errors)
