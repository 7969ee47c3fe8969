"""Sidecar manifests: what an artifact is, how it was made, how to feed it.

Every artifact ``X`` (``.onnx``, ``.fp16.onnx``, ``.plan``) has ``X.json`` beside it. The ONNX
graphs also carry the same record (minus their own hash) in ``metadata_props`` under
:data:`METADATA_KEY`, so a renamed or copied model stays self-describing.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import atomic_write_bytes

FORMAT = "dinosaw-deploy/manifest"
FORMAT_VERSION = 1
METADATA_KEY = "dinosaw_manifest"
MAX_MANIFEST_BYTES = 1 << 20


def sidecar_path(artifact: str | os.PathLike) -> Path:
    """``engines/x.onnx`` -> ``engines/x.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def manifest_json(fields: dict[str, Any], indent: int | None = None) -> str:
    """``fields`` as a manifest record (format tag first), serialised."""
    return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **fields}, indent=indent)


def write_manifest(artifact: str | os.PathLike, fields: dict[str, Any]) -> Path:
    path = sidecar_path(artifact)
    atomic_write_bytes(path, (manifest_json(fields, indent=2) + "\n").encode())
    return path


def parse_manifest(text: str, source: str) -> dict[str, Any]:
    """Parse and check a manifest's JSON text; ``source`` names it in error messages."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DinosawError(f"{source}: not a valid manifest ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise DinosawError(f"{source}: not a dinosaw-deploy manifest")
    version = record.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise DinosawError(f"{source}: manifest format_version must be an integer, got {str(version)[:40]!r}")
    if version > FORMAT_VERSION:
        raise DinosawError(
            f"{source}: manifest format {record['format_version']} is newer than this "
            f"dinosaw-deploy understands ({FORMAT_VERSION}); upgrade the package"
        )
    return record


def read_manifest(artifact: str | os.PathLike) -> dict[str, Any]:
    """The sidecar manifest of ``artifact`` (or ``artifact`` itself if it is the JSON)."""
    artifact = Path(artifact)
    path = artifact if artifact.suffix == ".json" else sidecar_path(artifact)
    if not path.is_file():
        raise DinosawError(f"no manifest found at {path}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise DinosawError(f"{path}: not a manifest (larger than {MAX_MANIFEST_BYTES >> 20} MiB)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DinosawError(f"{path}: not a valid manifest (binary, not UTF-8 JSON)") from None
    return parse_manifest(text, str(path))


def engine_identity(manifest: dict[str, Any]) -> str:
    """sha256 of what fixes an engine's features (architecture, bias, preprocessing, weights);
    the same for the fp32 and fp16 exports of one checkpoint."""
    keys = {k: manifest.get(k) for k in ("architecture", "bias", "preprocessing")}
    keys["checkpoint_sha256"] = (manifest.get("checkpoint") or {}).get("sha256")
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()
