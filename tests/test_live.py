"""LiveProcessor: frames equal Segmenter.predict bit for bit, every future resolves, bounded queue."""
from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

from dinosaw_deploy.engine.bias import _cached_bias
from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.live import FrameDropped, FrameError, LiveProcessor, image_process_fn
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles
from dinosaw_deploy.tiling.pipeline import patch_features


@pytest.fixture(scope="module")
def scene():
    image, truth = synthetic_micrograph(200, 240, seed=3)
    return image, synthetic_scribbles(truth, fraction=0.02, seed=3)


@pytest.fixture(scope="module")
def classical(scene):
    image, scribbles = scene
    return Segmenter(classifier=ClassifierParams(rounds=8), tile=64, threads=2).fit(image, scribbles)


@pytest.fixture(scope="module")
def vit_segmenter(scene, tiny_engine):
    image, scribbles = scene
    fx = FeatureExtractor(tiny_engine, threads=2)
    return Segmenter(extractor=fx, classifier=ClassifierParams(rounds=8), tile=96, threads=2).fit(image, scribbles)


def frames(image: np.ndarray) -> list[np.ndarray]:
    """Differently sized, typed and laid-out frames cut from one micrograph."""
    rgb_first = np.stack([image[:90, :120]] * 3)  # (3, H, W)
    return [image[:150, :170], image[10:200, 5:240], image[:70, :77].astype(np.float32) / 65535.0,
            (image[:130, :100] >> 8).astype(np.uint8), rgb_first]


def gated(proc: LiveProcessor) -> threading.Event:
    """Make the worker wait on the returned event before each frame (to fill the queue at will)."""
    gate, original = threading.Event(), proc._process

    def process(frame, meta):
        gate.wait(30)
        return original(frame, meta)

    proc._process = process
    return gate


def wait_until(condition, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_frames_equal_segmenter_predict(scene, classical):
    image = scene[0]
    with LiveProcessor(classical, queue_size=8, on_full="block") as proc:
        futures = [proc.submit(f, meta={"i": i}) for i, f in enumerate(frames(image))]
        for i, (frame, fut) in enumerate(zip(frames(image), futures)):
            res = fut.result(timeout=60)
            expected = classical.predict(frame)
            np.testing.assert_array_equal(res.labels, expected)
            assert res.labels.dtype == np.uint8 and res.meta == {"i": i} and res.features is None
            counts = np.bincount(expected.ravel(), minlength=4)[1:] / expected.size
            assert list(res.class_fractions.values()) == pytest.approx(counts.tolist())
            assert set(res.timings) == {"queue", "features", "classify", "total"}
            assert res.timings["total"] >= res.timings["classify"] > 0
        stats = proc.stats()
    assert (stats["done"], stats["dropped"], stats["failed"]) == (5, 0, 0)
    total = stats["latency_ms"]["total"]
    assert total["max"] >= total["p95"] >= total["p50"] > 0


def test_vit_frames_and_bare_extractor(scene, vit_segmenter):
    image = scene[0]
    frame = image[:160, :200]
    with LiveProcessor(vit_segmenter, return_features=True, warmup_shape=(60, 70)) as proc:
        res = proc.submit(frame).result(timeout=60)
        assert proc.stats()["done"] == 1  # the warm-up frame is not counted
    np.testing.assert_array_equal(res.labels, vit_segmenter.predict(frame))
    fx = vit_segmenter.extractor
    expected = patch_features(frame, fx, intensity_range=vit_segmenter.prepare(frame).intensity_range)
    np.testing.assert_array_equal(res.features, expected)
    assert res.timings["features"] > 0
    with LiveProcessor(fx) as proc:
        res = proc.submit(frame).result(timeout=60)
        too_small = proc.submit(np.zeros((10, 10), np.uint8))  # smaller than one patch: the engine refuses
        with pytest.raises(FrameError, match="frame 1: .*smaller than one"):
            too_small.result(timeout=60)
    assert res.labels is None and res.class_fractions == {}
    np.testing.assert_array_equal(res.features, patch_features(frame, fx))  # the engine's own intensity rule


def test_crop_bottom_cuts_the_databar(scene, classical):
    image = scene[0]
    with LiveProcessor(classical, crop_bottom=40) as proc:
        res = proc.submit(image).result(timeout=60)
        gone = proc.submit(image[:40])
        with pytest.raises(FrameError, match="empty after cropping 40 rows"):
            gone.result(timeout=60)
    np.testing.assert_array_equal(res.labels, classical.predict(image[:-40]))


def test_hostile_frames_fail_alone(scene, classical):
    image = scene[0]
    bad = {
        "complex": np.zeros((50, 50), np.complex64),
        "text": np.array([["a", "b"], ["c", "d"]]),
        "1d": np.zeros(100, np.uint8),
        "4d": np.zeros((2, 3, 40, 40), np.uint8),
        "two channels": np.zeros((40, 40, 2), np.uint8),
        "nan": np.where(np.eye(60, dtype=bool), np.nan, 0.5).astype(np.float32),
        "inf": np.full((60, 60), np.inf),
        "ragged": [[1, 2], [3]],
    }
    good = image[:80, :90]
    with LiveProcessor(classical, queue_size=len(bad) * 2, on_full="block") as proc:
        futures = {}
        for name, frame in bad.items():
            futures[name] = proc.submit(frame)
            futures[name + " then good"] = proc.submit(good)
        for name, fut in futures.items():
            if name.endswith("then good"):
                np.testing.assert_array_equal(fut.result(timeout=60).labels, classical.predict(good))
            else:
                with pytest.raises(FrameError):
                    fut.result(timeout=60)
        stats = proc.stats()
    assert (stats["done"], stats["failed"]) == (len(bad), len(bad))
    with pytest.raises(FrameError, match="NaN"):
        futures["nan"].result()


def test_engine_error_resolves_the_frame_and_the_worker_goes_on(scene, classical):
    image = scene[0]
    with LiveProcessor(classical) as proc:
        original, calls = proc._process, []

        def flaky(frame, meta):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("engine exploded")
            return original(frame, meta)

        proc._process = flaky
        first, second = proc.submit(image[:64, :64]), proc.submit(image[:64, :64])
        with pytest.raises(FrameError, match="frame 0: RuntimeError: engine exploded") as info:
            first.result(timeout=60)
        assert isinstance(info.value.__cause__, RuntimeError) and isinstance(info.value, DinosawError)
        assert second.result(timeout=60).labels.shape == (64, 64)


@pytest.mark.parametrize("on_full, dropped", [("drop_oldest", 1), ("drop_newest", 3)])
def test_a_full_queue_drops_with_a_clear_error(scene, classical, on_full, dropped):
    frame = scene[0][:48, :48]
    proc = LiveProcessor(classical, queue_size=2, on_full=on_full)
    gate = gated(proc)
    futures = [proc.submit(frame)]
    wait_until(lambda: proc.stats()["queued"] == 0)  # frame 0 is on the worker
    futures += [proc.submit(frame) for _ in range(3)]
    with pytest.raises(FrameDropped, match=f"frame {dropped}: .*queue full"):
        futures[dropped].result(timeout=1)
    assert proc.stats()["queued"] == 2
    gate.set()
    proc.close()
    for i, fut in enumerate(futures):
        if i != dropped:
            assert fut.result().labels.shape == frame.shape
    assert (proc.stats()["done"], proc.stats()["dropped"]) == (3, 1)


def test_block_makes_the_producer_wait(scene, classical):
    frame = scene[0][:48, :48]
    proc = LiveProcessor(classical, queue_size=1, on_full="block")
    gate = gated(proc)
    first = proc.submit(frame)
    wait_until(lambda: proc.stats()["queued"] == 0)
    second = proc.submit(frame)
    late: list = []
    producer = threading.Thread(target=lambda: late.append(proc.submit(frame)))
    producer.start()
    time.sleep(0.2)
    assert producer.is_alive() and not late  # blocked: the queue holds `second`
    gate.set()
    producer.join(30)
    proc.close()
    assert all(f.result().labels.shape == frame.shape for f in (first, second, late[0]))
    assert proc.stats()["dropped"] == 0


def test_ordered_resolves_in_submission_order(scene, classical):
    frame = scene[0][:48, :48]
    proc = LiveProcessor(classical, queue_size=1, on_full="drop_newest", ordered=True)
    gate = gated(proc)
    order: list[int] = []
    futures = []
    for i, f in enumerate([frame, frame, np.zeros(3), frame]):  # 1 queued, 2 bad, 3 dropped
        futures.append(proc.submit(f))
        futures[-1].add_done_callback(lambda _, i=i: order.append(i))
        if i == 0:
            wait_until(lambda: proc.stats()["queued"] == 0)
    time.sleep(0.1)
    assert order == [] and not any(f.done() for f in futures)  # all wait for frame 0
    gate.set()
    proc.close()
    assert order == [0, 1, 2, 3]
    assert isinstance(futures[2].exception(), FrameError) and isinstance(futures[3].exception(), FrameDropped)


def test_the_acquisition_may_reuse_its_buffer(scene, classical):
    buffer = scene[0][:64, :64].copy()
    expected = classical.predict(buffer)
    proc = LiveProcessor(classical)
    gate = gated(proc)
    fut = proc.submit(buffer)
    buffer[:] = 0  # the camera overwrites its buffer with the next frame before the worker gets there
    gate.set()
    proc.close()
    np.testing.assert_array_equal(fut.result().labels, expected)


def test_close_cancels_or_drains_and_refuses_new_frames(scene, classical):
    frame = scene[0][:48, :48]
    proc = LiveProcessor(classical, queue_size=4)
    gate = gated(proc)
    running = proc.submit(frame)
    wait_until(lambda: proc.stats()["queued"] == 0)
    queued = [proc.submit(frame) for _ in range(3)]
    threading.Timer(0.2, gate.set).start()
    proc.close(cancel=True)
    assert running.result().labels.shape == frame.shape
    for fut in queued:
        with pytest.raises(CancelledError):
            fut.result()
    assert proc.stats()["cancelled"] == 3
    with pytest.raises(DinosawError, match="closed"):
        proc.submit(frame)


def test_eight_producers_get_the_serial_results(scene, classical, vit_segmenter):
    image = scene[0]
    pool = frames(image)
    expected = {id(seg): [seg.predict(f) for f in pool] for seg in (classical, vit_segmenter)}
    for seg in (classical, vit_segmenter):
        results: list = []
        with LiveProcessor(seg, queue_size=4, on_full="block") as proc:
            def produce(k: int) -> None:
                for j in range(3):
                    i = (k + j) % len(pool)
                    results.append((i, proc.submit(pool[i], meta=(k, j))))

            threads = [threading.Thread(target=produce, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(results) == 24
            for i, fut in results:
                np.testing.assert_array_equal(fut.result(timeout=120).labels, expected[id(seg)][i])
            assert proc.stats()["done"] == 24


def test_the_extractor_is_thread_safe(scene, tiny_engine):
    fx = FeatureExtractor(tiny_engine, threads=1)
    crops = [scene[0][:14 * (4 + k), :14 * (5 + k % 3)] for k in range(8)]  # several grids: the bias cache too
    _cached_bias.cache_clear()
    out: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda k=k: out.__setitem__(k, fx(crops[k % 8]))) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(16):
        np.testing.assert_array_equal(out[k], fx(crops[k % 8]))


def test_memory_stays_bounded(scene, classical):
    frame = scene[0][:32, :32]
    with LiveProcessor(classical, queue_size=2, on_full="drop_oldest", ordered=True, window=5) as proc:
        futures = [proc.submit(frame) for _ in range(40)]
        wait_until(lambda: all(f.done() for f in futures))
        assert max(len(d) for d in proc._stats.latency.values()) <= 5
        assert not proc._held and not proc._pending
        stats = proc.stats()
    assert stats["done"] + stats["dropped"] == 40 and stats["done"] >= 2


def test_pycromanager_style_callback(scene, classical):
    image = scene[0][:64, :80]
    got, errors = [], []

    def boom(result):
        got.append(result)
        raise ValueError("a broken user callback")

    with LiveProcessor(classical) as proc:
        fn = image_process_fn(proc, on_result=boom, on_error=lambda exc, meta: errors.append((exc, meta)))
        out = fn(image, {"Axes": {"time": 0}})
        assert out[0] is image and out[1] == {"Axes": {"time": 0}}
        fn(np.zeros((4, 4), np.complex64), {"Axes": {"time": 1}})
        fn(image, {"Axes": {"time": 2}})  # the worker survived the raising callback
    assert [r.meta["Axes"]["time"] for r in got] == [0, 2]
    np.testing.assert_array_equal(got[0].labels, classical.predict(image))
    assert len(errors) == 1 and isinstance(errors[0][0], FrameError) and errors[0][1] == {"Axes": {"time": 1}}
    fn(image, {})  # after close: reported, never raised into the acquisition
    assert "closed" in str(errors[-1][0])


def test_bad_arguments_are_refused(classical):
    with pytest.raises(DinosawError, match="on_full"):
        LiveProcessor(classical, on_full="drop_all")
    with pytest.raises(DinosawError, match="queue_size"):
        LiveProcessor(classical, queue_size=0)
    with pytest.raises(DinosawError, match="Segmenter or a FeatureExtractor"):
        LiveProcessor(object())
    with pytest.raises(DinosawError, match="not trained"):
        LiveProcessor(Segmenter())
