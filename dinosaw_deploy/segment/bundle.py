"""The ``.dsw`` model bundle: a zip of plain data, never pickle.

Members:

* ``config.json`` — everything that is not an array (filter bank, intensity mapping, classes, engine
  identity, classifier parameters, channel names);
* ``arrays.npz`` — numeric state (ViT scaler / PCA / min-max), read with ``allow_pickle=False``;
* ``classifier.json`` — the XGBoost booster in XGBoost's own JSON format (format 1, before: ``classifier.ubj``,
  its UBJSON; such bundles still load, and saving one again writes format 2);
* ``manifest.json`` — format name and version and the sha256 of every other member.

Loading checks the format version and every hash, so a bundle from a newer release, a truncated
download or an edited member gives one clear error instead of wrong predictions. A bundle is untrusted
input: each member's declared size is capped (:data:`MAX_MEMBER_BYTES`) before it is read, and each
``.npy`` inside ``arrays.npz`` is checked (plain float/int dtype, declared shape matching its bytes, at
most :data:`MAX_ARRAY_BYTES`) before it is allocated. The content schema is
:mod:`dinosaw_deploy.segment.bundle_schema`; the booster's structure :mod:`dinosaw_deploy.segment.booster_check`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import atomic_path, read_npz

FORMAT = "dinosaw-deploy/segmenter"
FORMAT_VERSION = 2
CONFIG, ARRAYS, CLASSIFIER, MANIFEST = "config.json", "arrays.npz", "classifier.json", "manifest.json"
CLASSIFIERS = {1: "classifier.ubj", 2: CLASSIFIER}  # the booster member of each format version
# declared (uncompressed) size caps per member; zipfile never inflates a member past its declared size
MAX_MEMBER_BYTES = {MANIFEST: 64 << 10, CONFIG: 1 << 20, ARRAYS: 256 << 20, CLASSIFIER: 512 << 20}
MAX_ARRAY_BYTES = 64 << 20
MAX_ARRAYS = 64


@dataclass
class Bundle:
    """The decoded members of a ``.dsw`` file."""

    config: dict[str, Any]
    arrays: dict[str, np.ndarray]
    classifier: bytes  # XGBoost JSON, or UBJSON when read from a format-1 bundle
    classifier_name: str = CLASSIFIER

    @property
    def classifier_ubjson(self) -> bool:
        return self.classifier_name == CLASSIFIERS[1]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bundle_bytes(bundle: Bundle) -> bytes:
    """``bundle`` as the bytes of a ``.dsw`` file (a zip archive)."""
    arrays = io.BytesIO()
    np.savez_compressed(arrays, **{k: np.ascontiguousarray(v) for k, v in bundle.arrays.items()})
    members = {
        CONFIG: (json.dumps(bundle.config, indent=2) + "\n").encode(),
        ARRAYS: arrays.getvalue(),
        bundle.classifier_name: bytes(bundle.classifier),
    }
    manifest = {
        "format": FORMAT,
        "format_version": 1 if bundle.classifier_ubjson else FORMAT_VERSION,
        "sha256": {name: _sha256(data) for name, data in members.items()},
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n")
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def save_bundle(path: str | os.PathLike, bundle: Bundle) -> Path:
    """Write ``bundle`` to ``path`` atomically (temporary name, then rename)."""
    path = Path(path)
    data = bundle_bytes(bundle)
    if not path.parent.is_dir():
        raise DinosawError(f"cannot save {path}: the folder {path.parent} does not exist")
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise DinosawError(f"cannot save {path}: {exc.strerror or exc}") from None
    return path


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a ``.dsw`` file; any problem is a :class:`DinosawError`."""
    path = Path(path)
    if not path.is_file():
        raise DinosawError(f"model bundle not found: {path}")
    return read_bundle(path, str(path))


@dataclass(frozen=True)
class ModelFile:
    """A ``.dsw`` read from disk once: its path, the sha256 of its bytes and the verified :class:`Bundle`."""

    path: Path
    sha256: str
    bundle: Bundle

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelFile:
        path = Path(path)
        if not path.is_file():
            raise DinosawError(f"model bundle not found: {path}")
        cap = sum(MAX_MEMBER_BYTES.values()) + (1 << 20)  # the members' caps and the zip's own records
        if path.stat().st_size > cap:
            raise DinosawError(f"{path}: {path.stat().st_size} bytes is larger than any model bundle (cap {cap >> 20} MiB)")
        data = path.read_bytes()
        return cls(path, hashlib.sha256(data).hexdigest(), read_bundle(data, str(path)))


def read_bundle(source: str | os.PathLike | bytes, name: str = "model bundle") -> Bundle:
    """Read and verify a ``.dsw`` bundle from a file or its bytes (``name`` is what errors call it)."""
    path = name
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
            names = set(archive.namelist())
            if MANIFEST not in names:
                raise DinosawError(f"{path}: not a complete .dsw model bundle (missing {MANIFEST})")
            manifest = _json(_member(archive, MANIFEST, MANIFEST, path), path, MANIFEST)
            version = _version(manifest, path)
            classifier = CLASSIFIERS[version]
            missing = {CONFIG, ARRAYS, classifier} - names
            if missing:
                raise DinosawError(f"{path}: not a complete .dsw model bundle (missing {', '.join(sorted(missing))})")
            data = {member: _member(archive, member, CLASSIFIER if member == classifier else member, path)
                    for member in (CONFIG, ARRAYS, classifier)}
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, zipfile.LargeZipFile) as exc:
        raise DinosawError(f"{path}: not a .dsw model bundle, or a corrupt one ({exc})") from None
    except RuntimeError as exc:  # e.g. encrypted members
        raise DinosawError(f"{path}: unreadable model bundle ({exc})") from None
    hashes = manifest.get("sha256")
    if not isinstance(hashes, dict):
        raise DinosawError(f"{path}: {MANIFEST} has no sha256 record")
    for member, raw in data.items():
        if hashes.get(member) != _sha256(raw):
            raise DinosawError(f"{path}: {member} does not match its recorded sha256 (tampered or corrupt bundle)")
    arrays = read_npz(data[ARRAYS], f"{path}: {ARRAYS}", MAX_ARRAYS, MAX_ARRAY_BYTES)
    return Bundle(config=_json(data[CONFIG], path, CONFIG), arrays=arrays, classifier=data[classifier],
                  classifier_name=classifier)


def _member(archive: zipfile.ZipFile, member: str, kind: str, path: str) -> bytes:
    """A member's bytes, refused before reading when it declares more than its kind's cap."""
    size, cap = archive.getinfo(member).file_size, MAX_MEMBER_BYTES[kind]
    if size > cap:
        raise DinosawError(f"{path}: {member} declares {size} bytes, more than the {cap} bytes a model bundle "
                           "may hold there")
    return archive.read(member)


def _version(manifest: dict[str, Any], path: str) -> int:
    if manifest.get("format") != FORMAT:
        raise DinosawError(f"{path}: not a dinosaw-deploy segmenter bundle")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DinosawError(f"{path}: invalid bundle format version {version!r}")
    if version > FORMAT_VERSION:
        raise DinosawError(
            f"{path}: bundle format {version} is newer than this dinosaw-deploy understands "
            f"({FORMAT_VERSION}); upgrade the package"
        )
    return version


def _json(raw: bytes, path: str, member: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DinosawError(f"{path}: {member} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DinosawError(f"{path}: {member} is not a JSON object")
    return value
