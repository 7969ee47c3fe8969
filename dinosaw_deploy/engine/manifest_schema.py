"""An engine is what its manifest says: the manifest's schema, its agreement with the graph, and the
ONNX file's hash.

* :func:`check_engine_manifest` — the fields the runtime feeds the engine from (architecture, bias,
  preprocessing), converted to :class:`EngineManifest` whose types carry the ranges: one
  :class:`~dinosaw_deploy.schema.SchemaError` naming the field (a missing key, a string for a number,
  ``std`` 0, a negative dimension...).
* :func:`check_graph` — input/output names and ranks of the graph against the contract, and its
  static dimensions against the manifest (3 input channels, ``embed_dim`` output channels, bias
  heads 1 or ``num_heads``).
* :func:`check_agrees` — a sidecar against the record embedded in the (hash-checked) graph: the
  fields that fix the features must be equal, so editing the sidecar cannot change them.
* :func:`check_onnx_hash` — the ``.onnx`` bytes against the sidecar's ``onnx_sha256``, so a copied
  manifest beside other weights is refused; the hash is cached by path, size and mtime, so building
  a FeatureExtractor again costs nothing.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from dinosaw_deploy.engine.bias import BiasConfig
from dinosaw_deploy.engine.contract import INPUT_NAMES, OUTPUT_NAME, check_io_names
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import cached_sha256
from dinosaw_deploy.schema import Sha256, convert

MAX_DIM, MAX_HEADS, MAX_PATCH = 1 << 16, 1024, 1024
MIN_STD, MAX_NORM = 1e-6, 1e3
FEATURE_FIELDS = ("architecture", "bias", "preprocessing", "checkpoint")
Mean = Annotated[float, Meta(ge=-MAX_NORM, le=MAX_NORM)]
Std = Annotated[float, Meta(ge=MIN_STD, le=MAX_NORM)]


class Architecture(msgspec.Struct, frozen=True):
    """The sizes the runtime feeds the graph by (the exporter records more: depth, family, ...)."""

    embed_dim: Annotated[int, Meta(ge=1, le=MAX_DIM)]
    num_heads: Annotated[int, Meta(ge=1, le=MAX_HEADS)]
    patch_size: Annotated[int, Meta(ge=1, le=MAX_PATCH)]


class Preprocessing(msgspec.Struct, frozen=True):
    mean: tuple[Mean, Mean, Mean]
    std: tuple[Std, Std, Std]
    patch_size: int | None = None


class EngineManifest(msgspec.Struct, frozen=True):
    """The fields of a manifest the runtime feeds the engine from; the rest is the exporter's record."""

    architecture: Architecture
    bias: BiasConfig
    preprocessing: Preprocessing
    onnx_sha256: Sha256 | None = None

    def __post_init__(self) -> None:
        patch = self.architecture.patch_size
        if self.preprocessing.patch_size not in (None, patch):
            raise DinosawError(f"preprocessing.patch_size: must be architecture.patch_size ({patch}), "
                               f"got {self.preprocessing.patch_size}")


def check_engine_manifest(manifest: dict[str, Any], source: str | Path) -> EngineManifest:
    """The manifest's runtime fields, typed and bounded, or one :class:`SchemaError` naming the first bad field."""
    return convert(manifest, EngineManifest, f"{source}: manifest field")


def check_graph(manifest: dict[str, Any], inputs: Sequence[tuple[str, Sequence[Any]]],
                outputs: Sequence[tuple[str, Sequence[Any]]], source: str | Path) -> None:
    """The graph's ``(name, shape)`` inputs/outputs against the contract and the (checked) manifest;
    symbolic dimensions (strings / None) are not compared."""
    check_io_names([n for n, _ in inputs], [n for n, _ in outputs], source)
    shapes = {**dict(inputs), **dict(outputs)}
    arch = manifest["architecture"]
    expected = {INPUT_NAMES[0]: {1: 3}, INPUT_NAMES[1]: {1: (1, arch["num_heads"])},
                OUTPUT_NAME: {1: arch["embed_dim"]}}
    for name, dims in expected.items():
        shape = list(shapes[name])
        if len(shape) != 4:
            raise DinosawError(f"{source}: graph tensor {name} has rank {len(shape)}, expected 4")
        for axis, want in dims.items():
            have = shape[axis]
            if isinstance(have, int) and have not in (want if isinstance(want, tuple) else (want,)):
                raise DinosawError(f"{source}: graph tensor {name} has {have} at axis {axis} but the manifest says "
                                   f"{' or '.join(map(str, want)) if isinstance(want, tuple) else want}")


def check_agrees(sidecar: dict[str, Any], embedded: dict[str, Any], source: str | Path) -> None:
    """The sidecar must say what the (hash-verified) graph's embedded record says about everything
    that fixes the features: an edited sidecar cannot change the preprocessing or the bias."""
    for key in FEATURE_FIELDS:
        if key in embedded and sidecar.get(key) != embedded[key]:
            raise DinosawError(f"{source}: manifest field {key} disagrees with the record embedded in the ONNX "
                               "(an edited or foreign manifest); re-export the engine")


def check_onnx_hash(model_path: str | Path, manifest: dict[str, Any], manifest_path: str | Path) -> None:
    """Refuse an ``.onnx`` whose bytes are not those its sidecar manifest records."""
    expected = manifest.get("onnx_sha256")
    if not isinstance(expected, str):
        raise DinosawError(f"{manifest_path}: no onnx_sha256 recorded, so {Path(model_path).name} cannot be "
                           "verified; re-export the engine")
    if cached_sha256(model_path) != expected:
        raise DinosawError(f"{model_path}: its bytes do not match the onnx_sha256 of {manifest_path} (different "
                           "weights beside a copied manifest, or a corrupt file); re-export the engine")
