"""The ``.dsw`` model bundle: a zip of plain data, never pickle.

Members:

* ``config.json`` — everything that is not an array (filter bank, intensity mapping, classes, engine
  identity, classifier parameters, channel names);
* ``arrays.npz`` — numeric state (ViT scaler / PCA / min-max), read with ``allow_pickle=False``;
* ``classifier.ubj`` — the XGBoost booster in XGBoost's own UBJSON format;
* ``manifest.json`` — format name and version and the sha256 of every other member.

Loading checks the format version and every hash, so a bundle from a newer release, a truncated
download or an edited member gives one clear error instead of wrong predictions.
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
from dinosaw_deploy.files import atomic_path

FORMAT = "dinosaw-deploy/segmenter"
FORMAT_VERSION = 1
CONFIG, ARRAYS, CLASSIFIER, MANIFEST = "config.json", "arrays.npz", "classifier.ubj", "manifest.json"


@dataclass
class Bundle:
    """The decoded members of a ``.dsw`` file."""

    config: dict[str, Any]
    arrays: dict[str, np.ndarray]
    classifier: bytes


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_bundle(path: str | os.PathLike, bundle: Bundle) -> Path:
    """Write ``bundle`` to ``path`` atomically (temporary name, then rename)."""
    path = Path(path)
    arrays = io.BytesIO()
    np.savez_compressed(arrays, **{k: np.ascontiguousarray(v) for k, v in bundle.arrays.items()})
    members = {
        CONFIG: (json.dumps(bundle.config, indent=2) + "\n").encode(),
        ARRAYS: arrays.getvalue(),
        CLASSIFIER: bytes(bundle.classifier),
    }
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "sha256": {name: _sha256(data) for name, data in members.items()},
    }
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2) + "\n")
            for name, data in members.items():
                archive.writestr(name, data)
    return path


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a ``.dsw`` file; any problem is a :class:`DinosawError`."""
    path = Path(path)
    if not path.is_file():
        raise DinosawError(f"model bundle not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = {MANIFEST, CONFIG, ARRAYS, CLASSIFIER} - names
            if missing:
                raise DinosawError(f"{path}: not a complete .dsw model bundle (missing {', '.join(sorted(missing))})")
            data = {name: archive.read(name) for name in (MANIFEST, CONFIG, ARRAYS, CLASSIFIER)}
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, zipfile.LargeZipFile) as exc:
        raise DinosawError(f"{path}: not a .dsw model bundle, or a corrupt one ({exc})") from None
    except RuntimeError as exc:  # e.g. encrypted members
        raise DinosawError(f"{path}: unreadable model bundle ({exc})") from None
    manifest = _json(data[MANIFEST], path, MANIFEST)
    if manifest.get("format") != FORMAT:
        raise DinosawError(f"{path}: not a dinosaw-deploy segmenter bundle")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise DinosawError(f"{path}: invalid bundle format version {version!r}")
    if version > FORMAT_VERSION:
        raise DinosawError(
            f"{path}: bundle format {version} is newer than this dinosaw-deploy understands "
            f"({FORMAT_VERSION}); upgrade the package"
        )
    hashes = manifest.get("sha256") or {}
    for name in (CONFIG, ARRAYS, CLASSIFIER):
        if hashes.get(name) != _sha256(data[name]):
            raise DinosawError(f"{path}: {name} does not match its recorded sha256 (tampered or corrupt bundle)")
    try:
        with np.load(io.BytesIO(data[ARRAYS]), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DinosawError(f"{path}: unreadable {ARRAYS} ({exc})") from None
    return Bundle(config=_json(data[CONFIG], path, CONFIG), arrays=arrays, classifier=data[CLASSIFIER])


def _json(raw: bytes, path: Path, member: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DinosawError(f"{path}: {member} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DinosawError(f"{path}: {member} is not a JSON object")
    return value
