"""Hostile inputs, hostile files, two users at once (issue #11).

Every case ends in a correct result or one clear error (a DinosawError; on the command line exactly
one non-empty stderr line starting with ``Error:`` and exit code 1), in bounded time (every
subprocess has a timeout) and memory (``RLIMIT_AS`` on the subprocesses that load hostile files),
without touching the inputs (sha256 before and after).
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import resource
import struct
import subprocess
import sys
import zipfile
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


BOOSTER_MUTATIONS = {
    "child out of range": lambda raw: _patch_array(raw, b"left_children", 0, 100000),
    "negative child": lambda raw: _patch_array(raw, b"right_children", 0, -7),
    "cycle": lambda raw: _patch_array(raw, b"left_children", 1, 1),
    "feature out of range": lambda raw: _patch_array(raw, b"split_indices", 0, 5000),
    "truncated": lambda raw: raw[: len(raw) // 2],
    "empty": lambda raw: b"",
    "garbage": lambda raw: bytes(range(256)) * 8,
    "wrong class count": lambda raw: re.sub(rb"(num_classSL\x00{7}\x01)[0-9]", rb"\g<1>7", raw),
}


def test_booster_mutations_are_caught_by_the_structure_check(bundle, tmp_path):
    """In-process: each altered booster is refused before XGBoost sees it (no crash possible)."""
    _, model, _ = bundle
    raw = member(model, "classifier.ubj")
    for name, mutate in BOOSTER_MUTATIONS.items():
        changed = mutate(raw)
        assert changed != raw, name
        bad = rewrite_bundle(model, tmp_path / "bad.dsw", classifier_ubj=changed)
        with pytest.raises(DinosawError, match="classifier"):
            Segmenter.load(bad)


@pytest.mark.parametrize("mutation", ["child out of range", "truncated", "empty"])
def test_altered_booster_is_one_clear_error_not_a_signal(bundle, tmp_path, mutation):
    """The cases that crashed XGBoost (SIGSEGV/SIGABRT) end in exit 1 + one Error line, inputs untouched."""
    root, model, _ = bundle
    bad = rewrite_bundle(model, tmp_path / "bad.dsw", classifier_ubj=BOOSTER_MUTATIONS[mutation](
        member(model, "classifier.ubj")))
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
    for name in ("config.json", "classifier.ubj", "arrays.npz"):
        assert member(again, name) == member(model, name), name
    np.testing.assert_array_equal(Segmenter.load(again).predict(image), loaded.predict(image))
