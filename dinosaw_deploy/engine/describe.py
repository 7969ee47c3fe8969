"""What ``dinosaw-deploy info`` prints: an artifact's manifest, after the checks the runtime applies to it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from dinosaw_deploy.engine.backends.plan_manifest import PLAN_KIND
from dinosaw_deploy.engine.manifest import read_manifest, sidecar_path
from dinosaw_deploy.engine.manifest_schema import check_engine_manifest
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import cached_sha256
from dinosaw_deploy.image.reader import require_file


def describe_artifact(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an ``.onnx``, a ``.plan`` or their ``.json`` sidecar, validated as the runtime would:
    an ONNX is opened on ONNX Runtime's CPU backend (manifest schema, sha256, graph inputs/outputs against our
    contract, sidecar against the embedded record); a plan's sha256 is checked against its manifest (its
    machine binding is checked where it runs, before deserialising). Anything else: one :class:`DinosawError`."""
    path = Path(path)
    require_file(path, "artifact")
    if path.suffix == ".json":
        artifact = path.with_suffix("")
        if not artifact.is_file():  # a manifest alone: its schema is all there is to check
            manifest = read_manifest(path)
            _check_schema(manifest, path)
            return manifest
        path = artifact
    if path.suffix == ".onnx":
        from dinosaw_deploy.engine.backends.ort import OrtBackend

        return OrtBackend(path, "cpu", threads=1).manifest
    if path.suffix == ".plan":
        manifest = read_manifest(path)
        _check_schema(manifest, sidecar_path(path))
        if manifest.get("plan_sha256") != cached_sha256(path):
            raise DinosawError(f"{path}: its bytes do not match the sha256 in {sidecar_path(path).name} (a different "
                               "or damaged plan); rebuild it")
        return manifest
    raise DinosawError(f"{path.name}: not an engine (expected .onnx, .plan or their .json manifest)")


def _check_schema(manifest: dict[str, Any], source: Path) -> None:
    if manifest.get("kind") not in ("onnx", PLAN_KIND):
        raise DinosawError(f"{source}: not an engine manifest (kind {manifest.get('kind')!r})")
    check_engine_manifest(manifest, source)
