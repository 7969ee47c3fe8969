"""An engine is what its manifest says: the manifest's schema, its agreement with the graph, and the
ONNX file's hash.

* :func:`check_engine_manifest` — the fields the runtime feeds the engine from (architecture, bias,
  preprocessing): types and ranges, one :class:`DinosawError` naming the field (a missing key, a
  string for a number, ``std`` 0, a negative dimension...).
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
from typing import Any

from dinosaw_deploy.engine.bias import BiasConfig
from dinosaw_deploy.engine.contract import INPUT_NAMES, OUTPUT_NAME, check_io_names
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import cached_sha256

MAX_DIM = 1 << 16
MIN_STD, MAX_NORM = 1e-6, 1e3
FEATURE_FIELDS = ("architecture", "bias", "preprocessing", "checkpoint")


def _fail(source: str, field: str, wanted: str, value: Any) -> DinosawError:
    text = repr(value)
    return DinosawError(f"{source}: manifest field {field} must be {wanted}, got {text[:60]}")


def _int(record: dict, key: str, path: str, source: str, lo: int = 1, hi: int = MAX_DIM) -> int:
    value = record.get(key) if isinstance(record, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(source, f"{path}.{key}", f"an integer in {lo}..{hi}", value)
    return value


def _floats(record: dict, key: str, path: str, source: str, lo: float, hi: float) -> None:
    value = record.get(key)
    ok = (isinstance(value, list) and len(value) == 3
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and lo <= v <= hi for v in value))
    if not ok:
        raise _fail(source, f"{path}.{key}", f"3 numbers in [{lo:g}, {hi:g}]", value)


def _section(manifest: dict, key: str, source: str) -> dict:
    value = manifest.get(key)
    if not isinstance(value, dict):
        raise _fail(source, key, "an object", value)
    return value


def check_engine_manifest(manifest: dict[str, Any], source: str | Path) -> None:
    """Refuse a manifest the runtime cannot feed the engine from; names the first bad field."""
    source = str(source)
    arch = _section(manifest, "architecture", source)
    _int(arch, "embed_dim", "architecture", source)
    _int(arch, "num_heads", "architecture", source, hi=1024)
    patch = _int(arch, "patch_size", "architecture", source, hi=1024)
    bias = _section(manifest, "bias", source)
    try:
        config = BiasConfig.from_dict(bias)
    except (TypeError, ValueError) as exc:
        raise DinosawError(f"{source}: manifest field bias is invalid ({exc})") from None
    for key, kind in (("wrap", bool), ("normalize", bool), ("num_prefix_tokens", int)):
        value = getattr(config, key)
        if not isinstance(value, kind) or kind is int and (isinstance(value, bool) or not 0 <= value <= 1024):
            raise _fail(source, f"bias.{key}", "a boolean" if kind is bool else "an integer in 0..1024", value)
    pre = _section(manifest, "preprocessing", source)
    _floats(pre, "mean", "preprocessing", source, -MAX_NORM, MAX_NORM)
    _floats(pre, "std", "preprocessing", source, MIN_STD, MAX_NORM)
    if "patch_size" in pre and pre["patch_size"] != patch:
        raise _fail(source, "preprocessing.patch_size", f"architecture.patch_size ({patch})", pre["patch_size"])
    sha = manifest.get("onnx_sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise _fail(source, "onnx_sha256", "a 64-digit hex sha256", sha)


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
