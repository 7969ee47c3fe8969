"""--cluster: blocks are pure functions (same numbers for any layout and worker count as one
process), a killed worker or client changes nothing, a failing block is named, dask stays
unimported without --cluster. A scheduler and two workers run as subprocesses on 127.0.0.1."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from click.testing import CliRunner

from dinosaw_deploy.cli import main
from dinosaw_deploy.cluster.blocks import block_batches, feature_blocks, label_blocks
from dinosaw_deploy.cluster.connect import parse_spec
from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import MARKER
from dinosaw_deploy.image.ome_zarr import open_level
from dinosaw_deploy.image.reader import open_image
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles, write_synthetic_tiff
from dinosaw_deploy.tiling.grid import TileGrid, tile_boxes
from dinosaw_deploy.tiling.pipeline import extract_tiled
from dinosaw_deploy.tiling.store import CHUNK, FeatureStore

distributed = pytest.importorskip("distributed")
TILE = 126  # small tiles: many of them, so blocks hold whole tile rows and share others
TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait(timeout=10)


def _start_cluster(logs: Path, workers: int = 2) -> tuple[str, list[subprocess.Popen]]:
    """``dask scheduler`` + ``workers`` ``dask worker --no-nanny`` (1 thread each) on 127.0.0.1, all started:
    (address, [scheduler, *workers]); the caller stops them (:func:`_stop`)."""
    logs.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard", "--dashboard-address", "127.0.0.1:0"], env=env,
                              stdout=subprocess.DEVNULL, stderr=open(logs / "scheduler.log", "w"))]
    try:
        procs += [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                    "--no-nanny", "--host", "127.0.0.1", "--no-dashboard", "--dashboard-address",
                                    "127.0.0.1:0", "--local-directory",
                                    str(logs / f"w{i}")], env=env, stdout=subprocess.DEVNULL,
                                   stderr=open(logs / f"worker{i}.log", "w")) for i in range(workers)]
        with distributed.Client(address, timeout=TIMEOUT_S) as client:
            client.wait_for_workers(workers, timeout=TIMEOUT_S)
    except BaseException:
        _stop(procs)
        raise
    return address, procs


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A scheduler and 2 workers (:func:`_start_cluster`); yields (address, worker processes); everything is
    killed at teardown."""
    address, procs = _start_cluster(tmp_path_factory.mktemp("dask-logs"))
    try:
        yield address, procs[1:]
    finally:
        _stop(procs)


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A 5376 x 1000 px scan (6 feature chunk rows with 126-px tiles) and its single-process store."""
    root = tmp_path_factory.mktemp("cluster")
    write_synthetic_tiff(root / "scan.tif", 6 * CHUNK * 14, 1000, seed=3)
    return root


@pytest.fixture(scope="module")
def reference(scan, tiny_engine):
    fx = FeatureExtractor(tiny_engine, batch_size=4)
    with open_image(scan / "scan.tif") as reader:
        extract_tiled(reader, fx, scan / "ref.zarr", tile=TILE, dtype="float32")
    return FeatureStore.open(scan / "ref.zarr")


def _features(args: list, out: Path) -> dict:
    result = CliRunner().invoke(main, [str(a) for a in ("features", *args, "-o", out, "--tile", TILE, "--dtype",
                                                        "float32", "--no-preview", "--json")])
    assert result.exit_code == 0, result.output
    return FeatureStore.open(out)


def _same_store(store: FeatureStore, reference: FeatureStore) -> None:
    np.testing.assert_allclose(np.asarray(store.array), np.asarray(reference.array), rtol=0, atol=1e-6)
    attrs, ref = dict(store.attrs), dict(reference.attrs)
    assert attrs["complete"] is True and attrs == ref
    left = sorted(p.name for p in store.path.iterdir() if p.name != MARKER)  # our ownership marker stays
    assert left == ["features", "zarr.json"]  # no block done-markers left


# -- layout ---------------------------------------------------------------------------------


def test_cluster_specs():
    assert parse_spec("local") == ("local", None) and parse_spec("local:3") == ("local", 3)
    assert parse_spec("tcp://10.0.0.1:8786") == ("address", "tcp://10.0.0.1:8786")
    assert parse_spec("slurm:c.yaml") == ("slurm", Path("c.yaml"))
    for bad in ("local:0", "local:x", "10.0.0.1:8786", "sge:c.yaml"):
        with pytest.raises(DinosawError, match="--cluster"):
            parse_spec(bad)


def test_slurm_spec_errors_are_clear(tmp_path):
    from dinosaw_deploy.cluster import connect

    with pytest.raises(DinosawError, match="not found"):
        with connect(f"slurm:{tmp_path / 'missing.yaml'}"):
            pass
    (tmp_path / "c.yaml").write_text("cluster: {cores: 4}\njobs: 2\n")
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        with pytest.raises(DinosawError, match="dask-jobqueue"):
            with connect(f"slurm:{tmp_path / 'c.yaml'}"):
                pass


@pytest.mark.parametrize("block, aspect", [(896, 4), (896, 0.5), (1792, 4)])
def test_blocks_tile_the_grid_on_chunk_edges(block, aspect):
    grid = TileGrid.for_image(3000, 2500, tile=TILE, overlap=2)
    boxes = feature_blocks(grid, block, aspect)
    covered = np.zeros((grid.grid_h, grid.grid_w), int)
    for r0, r1, c0, c1 in boxes:
        covered[r0:r1, c0:c1] += 1
        assert r0 % CHUNK == 0 and c0 % CHUNK == 0
        assert (r1 % CHUNK == 0 or r1 == grid.grid_h) and (c1 % CHUNK == 0 or c1 == grid.grid_w)
        tiles = [t for batch in block_batches(grid, (r0, r1, c0, c1), 4) for t in batch]
        for t in grid.tiles():  # every tile whose weights reach the block is computed
            reach = grid.weights(t)[max(r0 - t.y0, 0) : max(r1 - t.y0, 0), max(c0 - t.x0, 0) : max(c1 - t.x0, 0)]
            assert (t in tiles) or not reach.any()
    assert (covered == 1).all()
    groups = label_blocks((3000, 2100), 512, block)
    assert sorted(b for g in groups for b in g) == sorted(tile_boxes((3000, 2100), 512))


def test_feature_blocks_in_any_layout_equal_one_process(scan, reference, tiny_engine, tmp_path):
    """The block function alone (in this process): 64 x 64-patch blocks, columns split too."""
    import zarr

    from dinosaw_deploy.cluster.tasks import FeatureJob, ImageRef, feature_block

    grid = reference.grid
    array = zarr.open_array(tmp_path / "f.zarr", mode="w", shape=reference.shape, chunks=(96, CHUNK, CHUNK),
                            dtype="float32")
    (tmp_path / "m").mkdir()
    job = FeatureJob(image=ImageRef(str(scan / "scan.tif")), engine=str(tiny_engine), engine_stamp=(0, 0),
                     backend="cpu", engine_batch=4,
                     threads=1, grid=grid.to_dict(), intensity_range=reference.intensity_range, batch=4,
                     array=str(tmp_path / "f.zarr"), markers=str(tmp_path / "m"))
    boxes = feature_blocks(grid, 896, aspect=0.5)
    assert len({b[2] for b in boxes}) > 1  # columns are split
    for box in reversed(boxes):
        feature_block(job, box)
    np.testing.assert_allclose(np.asarray(array), np.asarray(reference.array), rtol=0, atol=1e-6)
    assert len(list((tmp_path / "m").iterdir())) == len(boxes)


# -- on a cluster ---------------------------------------------------------------------------


def test_features_identical_for_block_sizes_and_worker_counts(scan, reference, tiny_engine, scheduler, tmp_path):
    address, _ = scheduler
    common = [scan / "scan.tif", "--engine", tiny_engine]
    for name, extra in (("two_small", ["--cluster", address, "--block", 896]),
                        ("two_large", ["--cluster", address, "--block", 1792]),
                        ("one_local", ["--cluster", "local:1", "--block", 1792])):
        _same_store(_features([*common, *extra], tmp_path / f"{name}.zarr"), reference)


def test_segment_and_apply_identical_on_a_cluster(scan, tiny_engine, scheduler, tmp_path):
    address, _ = scheduler
    image, truth = synthetic_micrograph(600, 800, seed=5)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "scrib.tif", synthetic_scribbles(truth, fraction=0.02, seed=5))
    fast = ["--engine", tiny_engine, "--rounds", "5", "--threads", "2", "--modal", "1", "--probabilities"]
    runner = CliRunner()

    def segment(out: Path, *extra) -> None:
        result = runner.invoke(main, [str(a) for a in ("segment", tmp_path / "img.tif", "--labels",
                                                       tmp_path / "scrib.tif", "-o", out, *fast, *extra)])
        assert result.exit_code == 0, result.output

    segment(tmp_path / "ref.ome.tif", "--save-model", tmp_path / "ref.dsw")
    reference = tifffile.imread(tmp_path / "ref.ome.tif")
    probabilities = tifffile.imread(tmp_path / "ref.probabilities.ome.tif")
    segment(tmp_path / "a.ome.zarr", "--cluster", address, "--block", 512)  # 4 blocks
    np.testing.assert_array_equal(np.asarray(open_level(tmp_path / "a.ome.zarr", mode="r")), reference)
    np.testing.assert_array_equal(np.asarray(open_level(tmp_path / "a.probabilities.ome.zarr", mode="r")),
                                  probabilities)

    def apply(out: Path, *extra) -> np.ndarray:
        result = runner.invoke(main, [str(a) for a in ("apply", tmp_path / "img.tif", "--model", tmp_path / "ref.dsw",
                                                       "-o", out, "--engine", tiny_engine, "--modal", "1", *extra)])
        assert result.exit_code == 0, result.output
        return tifffile.imread(out)

    np.testing.assert_array_equal(apply(tmp_path / "b.ome.tif", "--cluster", address, "--block", 1024), reference)
    exact = apply(tmp_path / "exact.ome.tif", "--exact")  # every pixel classified: the cluster passes it on
    np.testing.assert_array_equal(apply(tmp_path / "c.ome.tif", "--exact", "--cluster", address, "--block", 512),
                                  exact)
    assert 0 < np.mean(exact != reference) < 1e-3


def test_failing_block_is_named_and_nothing_is_complete(tiny_engine, scheduler, tmp_path):
    address, _ = scheduler
    image = np.random.default_rng(0).random((3 * CHUNK * 14, 600)).astype(np.float32)
    image[2 * CHUNK * 14 + 100] = np.nan  # in the third block only
    tifffile.imwrite(tmp_path / "nan.tif", image)
    out = tmp_path / "nan.zarr"
    result = CliRunner().invoke(main, [str(a) for a in ("features", tmp_path / "nan.tif", "--engine", tiny_engine,
                                                        "-o", out, "--tile", TILE, "--intensity-range", 0, 1,
                                                        "--cluster", address, "--block", 896, "--no-preview")])
    assert result.exit_code != 0
    assert "Error: features block 128-192_0-42 failed" in result.output and "NaN" in result.output
    assert not out.exists()  # the unfinished store stays .partial, incomplete, with no marker for the bad block
    assert zarr.open_group(tmp_path / "nan.zarr.partial", mode="r").attrs["complete"] is False
    assert "128-192_0-42" not in os.listdir(tmp_path / "nan.zarr.partial" / "blocks")


def test_killed_client_resumes_to_the_same_store(scan, reference, tiny_engine, scheduler, tmp_path):
    """The client SIGKILLs itself after its first finished block; the same call again finishes the
    rest only, and the store equals the single-process one."""
    address, _ = scheduler
    out = tmp_path / "resumed.zarr"
    script = textwrap.dedent(f"""
        import os, signal
        from dinosaw_deploy.cluster import DaskTiles, connect
        from dinosaw_deploy.engine.extractor import FeatureExtractor
        from dinosaw_deploy.image.reader import open_image
        from dinosaw_deploy.tiling.pipeline import extract_tiled

        def progress(done, total):
            if done == 1:
                os.kill(os.getpid(), signal.SIGKILL)

        with connect({address!r}) as client, open_image({str(scan / "scan.tif")!r}) as reader:
            extract_tiled(reader, FeatureExtractor({str(tiny_engine)!r}, batch_size=4), {str(out)!r}, tile={TILE},
                          dtype="float32", progress=progress, runner=DaskTiles(client, block=896))
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=TIMEOUT_S, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not out.exists() and (tmp_path / "resumed.zarr.partial").is_dir()
    done_before = len(os.listdir(tmp_path / "resumed.zarr.partial" / "blocks"))
    assert 1 <= done_before < 6
    result = CliRunner().invoke(main, [str(a) for a in (
        "features", scan / "scan.tif", "--engine", tiny_engine, "-o", out, "--tile", TILE, "--dtype", "float32",
        "--no-preview", "--json", "--cluster", address, "--block", 896)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    # blocks the dead client had started may still land before the rerun looks: never more are redone
    assert summary["blocks"] == 6 and summary["blocks_computed"] <= 6 - done_before
    _same_store(FeatureStore.open(out), reference)


def test_killed_worker_blocks_run_elsewhere(scan, reference, tiny_engine, scheduler, tmp_path):
    """SIGKILL one worker after the first finished block (last test: it leaves one worker)."""
    from dinosaw_deploy.cluster import DaskTiles, connect

    address, workers = scheduler

    def progress(done, total):
        if done == 1:
            workers[0].send_signal(signal.SIGKILL)

    fx = FeatureExtractor(tiny_engine, batch_size=4)
    with connect(address) as client, open_image(scan / "scan.tif") as reader:
        summary = extract_tiled(reader, fx, tmp_path / "k.zarr", tile=TILE, dtype="float32", progress=progress,
                                runner=DaskTiles(client, block=896))
        assert workers[0].wait(timeout=10) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while len(client.scheduler_info()["workers"]) != 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(client.scheduler_info()["workers"]) == 1
    assert summary["blocks_computed"] == summary["blocks"] == 6
    _same_store(FeatureStore.open(tmp_path / "k.zarr"), reference)


def test_no_dask_without_cluster(tmp_path):
    image, truth = synthetic_micrograph(120, 150, seed=1)
    tifffile.imwrite(tmp_path / "s.tif", image)
    tifffile.imwrite(tmp_path / "l.tif", synthetic_scribbles(truth, fraction=0.05, seed=1))
    script = textwrap.dedent(f"""
        import sys
        from dinosaw_deploy.cli import main
        try:
            main(["segment", {str(tmp_path / "s.tif")!r}, "--labels", {str(tmp_path / "l.tif")!r}, "-o",
                  {str(tmp_path / "s.ome.zarr")!r}, "--no-vit", "--rounds", "2"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        loaded = [m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")]
        assert not loaded, loaded
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=TIMEOUT_S, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "s.ome.zarr" / "0").is_dir()


def test_an_absent_scheduler_is_one_line_within_the_connect_timeout(tiny_engine, tmp_path):
    write_synthetic_tiff(tmp_path / "s.tif", 256, 256, seed=0)
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dinosaw_deploy.cli", "features", str(tmp_path / "s.tif"), "-o",
                             str(tmp_path / "f.zarr"), "--engine", str(tiny_engine), "--cluster", address,
                             "--connect-timeout", "2"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"Error: cannot reach the dask scheduler at {address} within 2 s")
    assert elapsed < 2 + 15, elapsed  # interpreter and dask imports included
    assert not (tmp_path / "f.zarr").exists()


def test_a_scheduler_that_dies_mid_run_is_one_line_and_the_rerun_resumes(scan, reference, tiny_engine, tmp_path):
    """SIGKILL the scheduler once the first block is on disk: one line saying how to resume; the same command
    on a new scheduler finishes the store, equal to the single-process one."""
    out = tmp_path / "f.zarr"
    args = [sys.executable, "-m", "dinosaw_deploy.cli", "features", str(scan / "scan.tif"), "--engine",
            str(tiny_engine), "-o", str(out), "--tile", str(TILE), "--dtype", "float32", "--no-preview",
            "--block", "896", "--cluster"]
    address, procs = _start_cluster(tmp_path / "logs1", workers=1)
    try:
        run = subprocess.Popen([*args, address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        markers = tmp_path / "f.zarr.partial" / "blocks"
        deadline = time.monotonic() + TIMEOUT_S
        while not (markers.is_dir() and os.listdir(markers)) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        procs[0].kill()
        _, err = run.communicate(timeout=TIMEOUT_S)
    finally:
        _stop(procs)
    lines = [line for line in err.splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith("Error: lost the dask scheduler during the features stage") and "rerun" in lines[0]
    address, procs = _start_cluster(tmp_path / "logs2", workers=1)
    try:
        again = subprocess.run([*args, address], capture_output=True, text=True, timeout=TIMEOUT_S * 2)
    finally:
        _stop(procs)
    assert again.returncode == 0, again.stderr[-2000:]
    _same_store(FeatureStore.open(out), reference)
