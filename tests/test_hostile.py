"""Hostile inputs, hostile files, two users at once (issue #11).

Every case ends in a correct result or one clear error (a DinosawError; on the command line exactly
one non-empty stderr line starting with ``Error:`` and exit code 1), in bounded time (every
subprocess has a timeout) and memory (``RLIMIT_AS`` on the subprocesses that load hostile files),
without touching the inputs (sha256 before and after).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import resource
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.segment.bundle import MANIFEST
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles

TIMEOUT = 120  # s, for any subprocess
MEMORY = 3 << 30  # bytes of address space for a subprocess loading a hostile file


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))


def cli(*args, cwd: Path | None = None, memory: bool = True) -> subprocess.CompletedProcess:
    """``dinosaw-deploy ARGS`` in a subprocess with bounded time (and memory)."""
    return subprocess.run([sys.executable, "-m", "dinosaw_deploy.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=cwd, preexec_fn=_limit_memory if memory else None)


def assert_one_line_error(result, fragment: str = "", code: int = 1) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-2000:]
    assert "unexpected" not in lines[0] and "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- untrusted model bundles ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A small trained classical model, its bundle, and an image to apply it to."""
    root = tmp_path_factory.mktemp("hostile_bundle")
    image, truth = synthetic_micrograph(96, 128, seed=3)
    seg = Segmenter(classifier=ClassifierParams(rounds=3, max_depth=3), threads=1)
    seg.fit(image, synthetic_scribbles(truth, seed=3))
    seg.save(root / "model.dsw")
    tifffile.imwrite(root / "scan.tif", image)
    return root, root / "model.dsw", image


def rewrite_bundle(src: Path, dst: Path, **members: bytes) -> Path:
    """Copy a bundle replacing ``members`` (name with '.' as '_'), with the sha256 record recomputed,
    so that only the content checks can catch the change."""
    with zipfile.ZipFile(src) as zin:
        data = {name: zin.read(name) for name in zin.namelist()}
    for key, value in members.items():
        data[key.replace("_", ".", 1) if key.count("_") else key] = value
    manifest = json.loads(data[MANIFEST])
    manifest["sha256"] = {n: hashlib.sha256(d).hexdigest() for n, d in data.items() if n != MANIFEST}
    data[MANIFEST] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as zout:
        for name, value in data.items():
            zout.writestr(name, value)
    return dst


def member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as archive:
        return archive.read(name)


def _patch_array(raw: bytes, key: bytes, index: int, value: int) -> bytes:
    """Set element ``index`` of the first int32 typed array ``key`` in a UBJSON booster."""
    head = key + b"[$l#L"
    start = raw.index(head) + len(head) + 8 + 4 * index
    return raw[:start] + struct.pack(">i", value) + raw[start + 4:]


def _model_edit(edit):
    """A mutation of an XGBoost JSON booster: ``edit(model, first_tree)`` on the decoded model."""
    def mutate(raw: bytes) -> bytes:
        model = json.loads(raw)
        edit(model, model["learner"]["gradient_booster"]["model"]["trees"][0])
        return json.dumps(model).encode()
    return mutate


def _set_item(key, index, value):
    return _model_edit(lambda model, tree: tree[key].__setitem__(index, value))


BOOSTER_MUTATIONS = {
    "child out of range": _set_item("left_children", 0, 100000),
    "negative child": _set_item("right_children", 0, -7),
    "cycle": _set_item("left_children", 1, 1),
    "feature out of range": _set_item("split_indices", 0, 5000),
    "fractional child index": _set_item("left_children", 0, 1.5),
    "short array": _model_edit(lambda model, tree: tree["split_conditions"].pop()),
    "dart booster": _model_edit(lambda model, tree: model["learner"]["gradient_booster"].update(name="dart")),
    "wrong class count": _model_edit(lambda model, tree: model["learner"]["learner_model_param"].update(num_class="7")),
    "truncated": lambda raw: raw[: len(raw) // 2],
    "empty": lambda raw: b"",
    "garbage": lambda raw: bytes(range(256)) * 8,
}
UBJSON_MUTATIONS = {  # the same holes in the UBJSON booster of a format-1 bundle
    "child out of range": lambda raw: _patch_array(raw, b"left_children", 0, 100000),
    "cycle": lambda raw: _patch_array(raw, b"left_children", 1, 1),
    "feature out of range": lambda raw: _patch_array(raw, b"split_indices", 0, 5000),
    "wrong class count": lambda raw: re.sub(rb"(num_classSL\x00{7}\x01)[0-9]", rb"\g<1>7", raw),
    "truncated": lambda raw: raw[: len(raw) // 2],
}


def test_booster_mutations_are_caught_by_the_structure_check(bundle, tmp_path):
    """In-process: each altered booster is refused before XGBoost sees it (no crash possible)."""
    _, model, _ = bundle
    raw = member(model, "classifier.json")
    for name, mutate in BOOSTER_MUTATIONS.items():
        changed = mutate(raw)
        assert changed != raw, name
        bad = rewrite_bundle(model, tmp_path / "bad.dsw", classifier_json=changed)
        with pytest.raises(DinosawError, match="classifier") as caught:
            Segmenter.load(bad)
        assert "\n" not in str(caught.value), name


def test_ubjson_boosters_of_format_1_bundles_are_checked_too(bundle, tmp_path):
    from tests.test_bundle import as_format_1

    _, model, _ = bundle
    old = as_format_1(model, tmp_path / "old.dsw")
    Segmenter.load(old)  # the unaltered one loads
    raw = member(old, "classifier.ubj")
    for name, mutate in UBJSON_MUTATIONS.items():
        changed = mutate(raw)
        assert changed != raw, name
        with pytest.raises(DinosawError, match="classifier.ubj"):
            Segmenter.load(rewrite_bundle(old, tmp_path / "bad.dsw", classifier_ubj=changed))


@pytest.mark.parametrize("mutation", ["child out of range", "truncated", "empty"])
def test_altered_booster_is_one_clear_error_not_a_signal(bundle, tmp_path, mutation):
    """The cases that crashed XGBoost (SIGSEGV/SIGABRT) end in exit 1 + one Error line, inputs untouched."""
    root, model, _ = bundle
    bad = rewrite_bundle(model, tmp_path / "bad.dsw", classifier_json=BOOSTER_MUTATIONS[mutation](
        member(model, "classifier.json")))
    before = sha(bad), sha(root / "scan.tif")
    result = cli("apply", root / "scan.tif", "--model", bad, "-o", tmp_path / "out.ome.tif")
    assert_one_line_error(result, "classifier")
    assert (sha(bad), sha(root / "scan.tif")) == before
    assert not list(tmp_path.glob("out*"))


def _config_edit(edit):
    def apply(model: Path) -> dict[str, bytes]:
        config = json.loads(member(model, "config.json"))
        edit(config)
        return {"config_json": json.dumps(config).encode()}
    return apply


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _npz_declaring(shape: tuple[int, ...]) -> bytes:
    """An npz whose member's header declares ``shape`` float32 but holds 16 bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("vit_mean.npy", header.getvalue() + bytes(16))
    return buffer.getvalue()


def _npz_inflating(megabytes: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("vit_mean.npy", "w", force_zip64=True) as handle:
            for _ in range(megabytes):
                handle.write(bytes(1 << 20))
    return buffer.getvalue()


def _set(path: str, value):
    def edit(config):
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return edit


VIT = {"model": "m", "identity": "0" * 64, "patch_size": 0, "n_components": 9}
CONFIG_CASES = {
    "membrane angles 1e7": (_config_edit(_set("filter_bank.membrane_angles", 10_000_000)),
                            "filter_bank.membrane_angles"),
    "sigmas 1e6 entries": (_config_edit(_set("filter_bank.sigmas", list(range(100)))), "filter_bank.sigmas"),
    "CLAHE bins 1e9": (_config_edit(_set("contrast", {"grid": 8, "clip_limit": 0.01, "bins": 10**9})),
                       "contrast.bins"),
    "class index 256": (_config_edit(_set("classes.0.index", 256)), "classes[0].index"),
    "duplicate class index": (_config_edit(_set("classes.1.index", 1)), "classes[1].index"),
    "no classes": (_config_edit(_set("classes", [])), "classes"),
    "patch size 0": (_config_edit(_set("vit", VIT)), "vit.patch_size"),
    "tile 0": (_config_edit(_set("tile", 0)), "tile"),
    "rounds as string": (_config_edit(_set("classifier.rounds", "100")), "classifier.rounds"),
    "unknown classifier field": (_config_edit(_set("classifier.booster", "dart")), "classifier.booster"),
    "missing channels": (_config_edit(lambda c: c.pop("channels")), "channels is missing"),
    "NaN truncate": (lambda m: {"config_json": member(m, "config.json").replace(b'"truncate": 4.0',
                                                                                b'"truncate": NaN')},
                     "filter_bank.truncate"),
    "config is a list": (lambda m: {"config_json": b"[1, 2]"}, "not a JSON object"),
    "config of 2 MiB": (_config_edit(_set("training", {"junk": "x" * (2 << 20)})), "config.json declares"),
    "npz declaring 4 TB": (lambda m: {"arrays_npz": _npz_declaring((1 << 20, 1 << 20))}, "vit_mean declares"),
    "npz member inflating to 100 MiB": (lambda m: {"arrays_npz": _npz_inflating(100)}, "not a bounded .npy"),
    "npz object array": (lambda m: {"arrays_npz": _npz(vit_mean=np.array(["a"], dtype=object))}, "dtype object"),
    "arrays for a classical model": (lambda m: {"arrays_npz": _npz(vit_mean=np.zeros(3, np.float32))},
                                     "arrays.npz holds"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_hostile_bundle_config_names_the_field(bundle, tmp_path, case):
    _, model, _ = bundle
    edit, fragment = CONFIG_CASES[case]
    bad = rewrite_bundle(model, tmp_path / "bad.dsw", **edit(model))
    with pytest.raises(DinosawError) as caught:
        Segmenter.load(bad)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_hostile_bundles_load_in_bounded_memory(bundle, tmp_path):
    """The size bombs, loaded by the CLI in a subprocess under RLIMIT_AS: a clean one-line refusal."""
    root, model, _ = bundle
    for case in ("membrane angles 1e7", "npz declaring 4 TB", "config of 2 MiB"):
        edit, fragment = CONFIG_CASES[case]
        bad = rewrite_bundle(model, tmp_path / "bad.dsw", **edit(model))
        assert_one_line_error(cli("apply", root / "scan.tif", "--model", bad, "-o", tmp_path / "o.ome.tif"),
                              fragment)


def test_bundle_roundtrip_is_identical(bundle, tmp_path):
    _, model, image = bundle
    loaded = Segmenter.load(model)
    again = loaded.save(tmp_path / "again.dsw")
    for name in ("config.json", "classifier.json", "arrays.npz"):
        assert member(again, name) == member(model, name), name
    np.testing.assert_array_equal(Segmenter.load(again).predict(image), loaded.predict(image))


# -- engines are what their manifest says --------------------------------------------------------
@pytest.fixture()
def engine_copy(tiny_engine, tmp_path):
    """A private copy of the tiny engine and its manifest: (onnx path, manifest dict)."""
    onnx = tmp_path / "eng" / "e.onnx"
    onnx.parent.mkdir()
    onnx.write_bytes(tiny_engine.read_bytes())
    manifest = json.loads(tiny_engine.with_name("tiny.onnx.json").read_text())
    onnx.with_name("e.onnx.json").write_text(json.dumps(manifest))
    return onnx, manifest


def _edit(manifest: dict, path: str, value) -> dict:
    manifest = json.loads(json.dumps(manifest))
    *parents, last = path.split(".")
    node = manifest
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return manifest


_DELETE = object()
MANIFEST_CASES = {
    "missing architecture": ("architecture", _DELETE, "architecture is missing"),
    "embed_dim as string": ("architecture.embed_dim", "96", "architecture.embed_dim"),
    "negative patch size": ("architecture.patch_size", -14, "architecture.patch_size"),
    "heads zero": ("architecture.num_heads", 0, "architecture.num_heads"),
    "std zero": ("preprocessing.std", [0.229, 0, 0.225], "preprocessing.std"),
    "mean of two": ("preprocessing.mean", [0.5, 0.5], "preprocessing.mean"),
    "bias slopes": ("bias.slopes", "learned", "bias.slopes: invalid enum value"),
    "bias prefix tokens as list": ("bias.num_prefix_tokens", [5], "bias"),
    "format version string": ("format_version", "1", "format_version"),
    "embed_dim edited": ("architecture.embed_dim", 97, "architecture disagrees with the record embedded"),
    "mean edited": ("preprocessing.mean", [0.5, 0.5, 0.5], "preprocessing disagrees with the record embedded"),
    "huge mean": ("preprocessing.mean", [1e308, 0.5, 0.5], "preprocessing.mean"),
    "hash missing": ("onnx_sha256", _DELETE, "no onnx_sha256"),
}


@pytest.mark.parametrize("case", list(MANIFEST_CASES))
def test_malformed_manifest_is_one_clear_error(engine_copy, case):
    from dinosaw_deploy.engine.extractor import FeatureExtractor

    onnx, manifest = engine_copy
    path, value, fragment = MANIFEST_CASES[case]
    onnx.with_name("e.onnx.json").write_text(json.dumps(_edit(manifest, path, value)))
    with pytest.raises(DinosawError) as caught:
        FeatureExtractor(onnx, backend="cpu")
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_graph_must_agree_with_its_manifest(engine_copy):
    from dinosaw_deploy.engine.manifest_schema import check_graph

    _, manifest = engine_copy
    good = [("pixel_values", ["b", 3, "h", "w"]), ("attn_bias", [1, "heads", "t", "t"])]
    check_graph(manifest, good, [("features", ["b", 96, "h", "w"])], "e.onnx")
    for inputs, outputs, fragment in (
        (good, [("features", ["b", 96, "h", "w"])], "features has 96 at axis 1 but the manifest says 97"),
        (good, [("features", ["b", 96, "h"])], "rank 3"),
        ([good[0], ("attn_bias", [1, 4, "t", "t"])], [("features", ["b", 96, "h", "w"])], "attn_bias has 4"),
        (good[::-1], [("features", ["b", 96, "h", "w"])], "not a dinosaw-deploy engine"),
    ):
        edited = _edit(manifest, "architecture.embed_dim", 97) if "says 97" in fragment else manifest
        with pytest.raises(DinosawError, match=fragment.replace("(", r"\(")):
            check_graph(edited, inputs, outputs, "e.onnx")


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"[1, 2]", b"", b'{"format": "dinosaw-deploy/manifest"}'])
def test_garbage_manifest_is_one_clear_error(engine_copy, content):
    from dinosaw_deploy.engine.extractor import FeatureExtractor

    onnx, _ = engine_copy
    onnx.with_name("e.onnx.json").write_bytes(content)
    with pytest.raises(DinosawError, match="manifest"):
        FeatureExtractor(onnx, backend="cpu")


def test_other_weights_beside_a_copied_manifest_are_refused(engine_copy, tiny_engine, tmp_path):
    """The fp16 graph under the fp32 manifest: same names and shapes, other bytes -> refused (CLI: one line)."""
    onnx, _ = engine_copy
    onnx.write_bytes(tiny_engine.with_name("tiny.fp16.onnx").read_bytes())
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((56, 56), np.uint8))
    result = cli("features", image, "-o", tmp_path / "f.npy", "--engine", onnx, "--backend", "cpu")
    assert_one_line_error(result, "onnx_sha256")
    assert not (tmp_path / "f.npy").exists()


def test_engine_hash_is_cached_by_path_size_and_mtime(engine_copy, monkeypatch):
    from dinosaw_deploy import files
    from dinosaw_deploy.engine.extractor import FeatureExtractor

    onnx, _ = engine_copy
    calls = []
    real = files.file_sha256
    monkeypatch.setattr(files, "file_sha256", lambda path, *a: calls.append(path) or real(path, *a))
    FeatureExtractor(onnx, backend="cpu")
    FeatureExtractor(onnx, backend="cpu")
    assert len(calls) == 1
    os.utime(onnx, ns=(onnx.stat().st_atime_ns, onnx.stat().st_mtime_ns + 10**9))  # touched: hashed again
    FeatureExtractor(onnx, backend="cpu")
    assert len(calls) == 2


# -- outputs are owned, exclusively ---------------------------------------------------------------
def test_a_second_writer_is_refused_at_once(bundle, tmp_path):
    """Another process holds the output's lock: apply fails immediately, writes nothing, leaves the lock."""
    from dinosaw_deploy.files import lock_path, output_lock

    root, model, _ = bundle
    out = tmp_path / "seg.ome.tif"
    with output_lock([out]):
        result = cli("apply", root / "scan.tif", "--model", model, "-o", out)
        assert lock_path(out).exists()
    assert_one_line_error(result, "being written by another process")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_two_concurrent_runs_on_one_output_one_wins(bundle, tmp_path):
    """Two apply processes started together on one -o: exactly one succeeds, the other ends in one
    clean error line (locked, or the output exists), and the output is the correct segmentation."""
    root, model, image = bundle
    out = tmp_path / "seg.ome.tif"
    command = [sys.executable, "-m", "dinosaw_deploy.cli", "apply", str(root / "scan.tif"), "--model", str(model),
               "-o", str(out), "--threads", "1"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 1], [r.stderr for r in results]
    loser = next(r for r in results if r.returncode == 1)
    assert_one_line_error(loser)
    assert "being written by another process" in loser.stderr or "exists" in loser.stderr
    np.testing.assert_array_equal(tifffile.imread(out), Segmenter.load(model).predict(image))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.ome.tif", "seg.preview.png"]


def test_a_users_folder_named_like_our_work_folder_is_never_deleted(bundle, tmp_path):
    root, model, _ = bundle
    work = tmp_path / "seg.ome.tif.work"
    work.mkdir()
    (work / "thesis.docx").write_bytes(b"precious")
    result = cli("apply", root / "scan.tif", "--model", model, "-o", tmp_path / "seg.ome.tif")
    assert_one_line_error(result, "not made by dinosaw-deploy")
    assert (work / "thesis.docx").read_bytes() == b"precious"


def test_a_users_folder_named_like_a_partial_store_is_never_deleted(tiny_engine, tmp_path):
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((56, 56), np.uint8))
    partial = tmp_path / "f.zarr.partial"
    partial.mkdir()
    (partial / "data.bin").write_bytes(b"precious")
    result = cli("features", image, "-o", tmp_path / "f.zarr", "--engine", tiny_engine, "--backend", "cpu")
    assert_one_line_error(result, "not made by dinosaw-deploy")
    assert (partial / "data.bin").read_bytes() == b"precious"


def test_input_inside_old_output_or_output_inside_input_is_refused_even_with_overwrite(tiny_engine, tmp_path):
    store = tmp_path / "f.zarr"
    store.mkdir()
    image = store / "img.tif"
    tifffile.imwrite(image, np.zeros((56, 56), np.uint8))
    before = sha(image)
    result = cli("features", image, "-o", store, "--engine", tiny_engine, "--overwrite", "--backend", "cpu")
    assert_one_line_error(result, "holds the input")
    result = cli("probe", store, "-o", store / "report.json", "--overwrite", "--no-figure")
    assert_one_line_error(result, "inside the input")
    assert sha(image) == before and sorted(p.name for p in store.iterdir()) == ["img.tif"]


def test_sidecar_is_an_output(tiny_engine, tmp_path):
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((56, 56), np.uint8))
    (tmp_path / "f.npy.json").write_text("mine")
    result = cli("features", image, "-o", tmp_path / "f.npy", "--engine", tiny_engine, "--backend", "cpu")
    assert_one_line_error(result, "f.npy.json exists")
    assert (tmp_path / "f.npy.json").read_text() == "mine" and not (tmp_path / "f.npy").exists()


def test_export_never_replaces_an_onnx_or_its_own_checkpoint(tmp_path):
    from dinosaw_deploy.export.build import run_export

    from .conftest import TINY

    (tmp_path / "m.onnx").write_bytes(b"an older export")
    with pytest.raises(DinosawError, match="exists; pass --overwrite"):
        run_export(TINY / "weights_timm.pth", out_dir=tmp_path, name="m", config_path=TINY / "config.json")
    checkpoint = tmp_path / "c.onnx"
    checkpoint.write_bytes((TINY / "weights_timm.pth").read_bytes())
    with pytest.raises(DinosawError, match="one of the inputs"):
        run_export(checkpoint, out_dir=tmp_path, name="c", config_path=TINY / "config.json", overwrite=True)
    assert (tmp_path / "m.onnx").read_bytes() == b"an older export"
    assert checkpoint.read_bytes() == (TINY / "weights_timm.pth").read_bytes()


def test_leftovers_of_a_killed_final_write_are_gone_after_the_next_run(bundle, tmp_path):
    """kill -9 during the OME write leaves ``.seg.ome.partial-PID.tif``; the next run removes it (its
    PID no longer runs) but never a live process's temporary file."""
    root, model, _ = bundle
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=TIMEOUT)
    stale = tmp_path / f".seg.ome.partial-{dead.pid}.tif"
    stale.write_bytes(b"half a pyramid")
    live = tmp_path / f".seg.ome.partial-{os.getpid()}.tif"  # this test process runs: not stale
    live.write_bytes(b"being written")
    result = cli("apply", root / "scan.tif", "--model", model, "-o", tmp_path / "seg.ome.tif")
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and live.read_bytes() == b"being written"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "seg.ome.tif", "seg.preview.png"])


# -- images that lie about their size; NaN, inf and complex pixels -------------------------------
def _png_declaring(path: Path, size: int) -> Path:
    """A few-hundred-byte PNG whose header declares size x size px."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(size + 1))) + chunk(b"IEND", b""))
    return path


def test_a_png_declaring_30000_squared_is_refused_before_decoding(tiny_engine, tmp_path):
    big = _png_declaring(tmp_path / "big.png", 30000)
    for args, fragment in ((["features", big, "-o", tmp_path / "f.zarr"], "declares 30000x30000"),
                           (["features", big, "-o", tmp_path / "f.npy"], "declares 30000x30000"),
                           (["probe", big, "-o", tmp_path / "r.json", "--no-figure"], "2142x2142 patches")):
        assert_one_line_error(cli(*args, "--engine", tiny_engine, "--backend", "cpu"), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]


def test_whole_image_extractor_call_refuses_huge_arrays_and_points_to_tiling(tiny_engine):
    from dinosaw_deploy.engine.extractor import FeatureExtractor

    fx = FeatureExtractor(tiny_engine, backend="cpu")
    with pytest.raises(DinosawError, match="patch_features"):
        fx(np.zeros((3000, 3000), np.uint8))  # 214x214 patches: 15.6 GiB of attention in one pass
    assert FeatureExtractor(tiny_engine, backend="cpu", max_tokens=10)(np.zeros((42, 42), np.uint8)).shape[1:] == (3, 3)
    with pytest.raises(DinosawError, match="max_tokens"):
        FeatureExtractor(tiny_engine, backend="cpu", max_tokens=4)(np.zeros((42, 42), np.uint8))


def test_a_nan_block_outside_the_intensity_sample_is_refused_where_it_is_read(bundle, tmp_path, monkeypatch):
    """The sample is a few random windows; the NaN block lies outside them and must still be refused
    (it silently made tiles class 2 before)."""
    from dinosaw_deploy.image import intensity
    from dinosaw_deploy.image.reader import ArrayRegions
    from dinosaw_deploy.segment.run import apply_scan

    root, model, image = bundle
    monkeypatch.setattr(intensity, "WHOLE_IMAGE_PIXELS", 100)
    monkeypatch.setattr(intensity, "WINDOWS", 2)
    monkeypatch.setattr(intensity, "WINDOW", 8)
    scan = image.astype(np.float32) / 255
    scan[80:96, 112:128] = np.nan
    assert np.isfinite(intensity.sample_pixels(ArrayRegions(scan))).all()  # the sample misses the block
    tifffile.imwrite(tmp_path / "scan.tif", scan)
    with pytest.raises(DinosawError, match=r"NaN or infinite values \(region"):
        apply_scan(tmp_path / "scan.tif", model, tmp_path / "out.ome.tif")
    assert not (tmp_path / "out.ome.tif").exists()
    scan[80:96, 112:128] = np.inf
    with pytest.raises(DinosawError, match="NaN or infinite"):
        Segmenter.load(model).predict(scan)


def test_complex_pixels_are_refused_everywhere(bundle, tiny_engine, tmp_path):
    from dinosaw_deploy.engine.extractor import FeatureExtractor
    from dinosaw_deploy.image.reader import open_image

    _, model, image = bundle
    wave = image.astype(np.complex64)
    with pytest.raises(DinosawError, match="complex|pixel type"):
        Segmenter.load(model).predict(wave)
    with pytest.raises(DinosawError, match="pixel type"):
        FeatureExtractor(tiny_engine, backend="cpu")(wave[:56, :56])
    tifffile.imwrite(tmp_path / "c.tif", wave)
    with pytest.raises(DinosawError, match="complex"):
        open_image(tmp_path / "c.tif")


def test_label_stacks_are_refused(bundle, tmp_path):
    from dinosaw_deploy.segment.labels import load_scribbles

    _, _, image = bundle
    tifffile.imwrite(tmp_path / "stack.tif", np.ones((2, *image.shape), np.uint8))
    with pytest.raises(DinosawError, match="stack of 2"):
        load_scribbles(tmp_path / "stack.tif", image.shape)


def test_implausible_pixel_size_is_treated_as_unknown(tmp_path, caplog):
    from dinosaw_deploy.image.reader import open_image

    tifffile.imwrite(tmp_path / "fei.tif", np.zeros((32, 32), np.uint8),
                     extratags=[(34682, "s", 0, "[Scan]\nPixelWidth=1e-300\nPixelHeight=1e-300\n", True)])
    with open_image(tmp_path / "fei.tif") as reader:
        assert reader.info.vendor == "fei" and reader.info.pixel_size is None
    assert "implausible pixel size" in caplog.text


# -- every environment failure is one line ----------------------------------------------------------
def test_fifos_folders_and_pseudo_files_as_images(tiny_engine, tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    (tmp_path / "folder.tif").mkdir()
    for image, fragment in ((fifo, "FIFO"), (tmp_path / "folder.tif", "folder"), (Path("/proc/self/status"), "")):
        result = cli("features", image, "-o", tmp_path / "f.npy", "--engine", tiny_engine, "--backend", "cpu")
        assert_one_line_error(result, fragment)
    result = cli("segment", tmp_path / "folder.tif", "--labels", fifo, "-o", tmp_path / "s.ome.tif", "--no-vit")
    assert_one_line_error(result)


def test_missing_output_folder_and_full_disk_on_save(bundle, tmp_path, monkeypatch):
    _, model, _ = bundle
    seg = Segmenter.load(model)
    with pytest.raises(DinosawError, match="does not exist"):
        seg.save(tmp_path / "missing" / "m.dsw")

    write_bytes = Path.write_bytes

    def full(self, data):
        write_bytes(self, data[: len(data) // 2])  # the disk fills half-way through the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(DinosawError, match="No space left on device"):
        seg.save(tmp_path / "m.dsw")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code, text, expected", [
    (errno.ENOSPC, "No space left on device", "Error: no space left while writing {out} ("),
    (errno.EROFS, "Read-only file system", "Error: {out}: Read-only file system")])
def test_read_only_or_full_target_is_one_line(bundle, tmp_path, monkeypatch, code, text, expected):
    """Root ignores chmod (CI runs as root), so the failing write is injected; as a normal user a
    read-only folder is also tried for real."""
    from click.testing import CliRunner

    from dinosaw_deploy.cli import main
    from dinosaw_deploy.image import ome_writer

    root, model, _ = bundle

    def failing(path, *args, **kwargs):
        raise OSError(code, text, str(path))

    monkeypatch.setattr(ome_writer, "write_ome_pyramid", failing)
    monkeypatch.setattr("dinosaw_deploy.segment.job.write_ome_pyramid", failing)
    out = tmp_path / "seg.ome.tif"
    result = CliRunner().invoke(main, ["apply", str(root / "scan.tif"), "--model", str(model), "-o", str(out)])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(expected.format(out=out)), result.stderr
    if os.geteuid() != 0:
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        assert_one_line_error(cli("apply", root / "scan.tif", "--model", model, "-o", locked / "s.ome.tif"))


def test_library_warnings_join_the_one_error_line_or_stay_hidden():
    import logging
    import warnings

    import click
    from click.testing import CliRunner

    from dinosaw_deploy.cli import main

    @click.command("hostile-noise")
    @click.option("--fail", is_flag=True)
    def noisy(fail):
        warnings.warn("invalid value encountered in divide", RuntimeWarning)
        logging.getLogger("tifffile").warning("TiffPage 0: corrupted tag list")
        if fail:
            raise DinosawError("broken input")
        click.echo("done")

    main.add_command(noisy)
    try:
        failed = CliRunner().invoke(main, ["hostile-noise", "--fail"])
        passed = CliRunner().invoke(main, ["hostile-noise"])
    finally:
        main.commands.pop("hostile-noise")
    assert failed.exit_code == 1
    assert failed.stderr == "Error: broken input (library warning: invalid value encountered in divide)\n"
    assert passed.exit_code == 0 and passed.stderr == "" and passed.stdout == "done\n"


# -- options checked at the door ---------------------------------------------------------------------
@pytest.mark.parametrize("args, fragment", [
    (["train", "--teacher", "t.pth", "--images", ".", "-o", "s.pth", "--workers", "100000"], "--workers"),
    (["probe", "--roll", "-o", "r.json", "--seed", "-1"], "--seed"),
    (["apply", "x.tif", "--model", "m.dsw", "-o", "o.ome.tif", "--modal", "-1"], "--modal"),
])
def test_bad_options_are_one_line(args, fragment):
    from click.testing import CliRunner

    from dinosaw_deploy.cli import main

    result = CliRunner().invoke(main, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and fragment in lines[0]


def test_intensity_range_must_be_a_normal_positive_width(tiny_engine, tmp_path):
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((56, 56), np.uint8))
    for lo, hi in (("0", "1e-300"), ("0", "nan"), ("1", "1"), ("-1e40", "0")):
        result = cli("features", image, "-o", tmp_path / "f.npy", "--engine", tiny_engine, "--backend", "cpu",
                     "--intensity-range", lo, hi, memory=False)
        assert_one_line_error(result, "intensity range")


def test_modal_radius_is_checked_in_the_library(bundle):
    _, model, image = bundle
    seg = Segmenter.load(model)
    for modal in (-1, 10**6, 1.5):
        with pytest.raises(DinosawError, match="modal must be"):
            seg.predict(image, modal=modal)


def test_train_workers_are_bounded_in_the_library():
    pytest.importorskip("torch")
    from dinosaw_deploy.export.train import train

    with pytest.raises(DinosawError, match="workers must be"):
        train("t.pth", ".", "s.pth", workers=100000)


@pytest.mark.parametrize("array", [np.zeros((0, 0), np.float32), np.zeros((5,), np.uint8),
                                   np.zeros((40, 50, 5), np.uint8), np.zeros((1, 40, 50, 3), np.uint8),
                                   np.full((40, 50), None, object), np.zeros((40, 50), "U3"),
                                   np.zeros((40, 50), "datetime64[s]")],
                         ids=["empty float", "1-D", "5 channels", "4-D", "object", "strings", "datetimes"])
def test_odd_arrays_through_the_python_api(bundle, tiny_engine, array):
    from dinosaw_deploy.engine.extractor import FeatureExtractor

    _, model, _ = bundle
    seg, fx = Segmenter.load(model), FeatureExtractor(tiny_engine, backend="cpu")
    for call in (seg.predict, seg.predict_proba, fx, lambda a: fx.extract_batch([a, a])):
        with pytest.raises(DinosawError):
            call(array)


@pytest.mark.parametrize("grid", [-1, {"grid": [1, 2]}, {"grid": [3, 3], "tile": [None, 3], "overlap": 0,
                                                           "patch_size": 14, "window": "blend"}])
def test_feature_store_with_a_malformed_grid_record(tmp_path, grid):
    import zarr

    from dinosaw_deploy.tiling.store import FORMAT, FeatureStore

    group = zarr.open_group(tmp_path / "f.zarr", mode="w")
    group.create_array("features", shape=(4, 3, 3), dtype="float32")
    group.attrs.update({"format": FORMAT, "format_version": 1, "complete": True, "grid": grid})
    store = FeatureStore.open(tmp_path / "f.zarr")
    with pytest.raises(DinosawError, match="tile-grid record"):
        store.grid
    with pytest.raises(DinosawError, match="tile-grid record"):
        store.patch_size
