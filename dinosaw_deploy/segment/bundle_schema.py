"""The schema of a ``.dsw`` bundle's ``config.json`` and ``arrays.npz``: types and bounded ranges.

A bundle is untrusted input: every value that sizes an allocation or a loop (filter-bank sigmas,
membrane angles, CLAHE bins, tile, classes, PCA components, array shapes) is checked against the
bounds below before anything is built from it, and a refusal names the field, e.g.
``config.json: filter_bank.membrane_angles must be an integer in 1..180, got 10000000``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.intensity import HISTOGRAM_BINS, NORMALIZATIONS
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.filters import FilterBankConfig
from dinosaw_deploy.segment.labels import MAX_CLASSES

MAX_SIGMAS, MAX_SIGMA, MAX_TRUNCATE = 16, 64.0, 8.0
MAX_MEMBRANE_LENGTH, MAX_MEMBRANE_ANGLES = 255, 180
MAX_CLAHE_GRID, MAX_CLAHE_BINS = 256, 65536
MIN_TILE, MAX_TILE = 16, 4096
MAX_PATCH_SIZE, MAX_COMPONENTS, MAX_EMBED_DIM = 64, 1024, 8192
MAX_ROUNDS, MAX_DEPTH, MAX_BIN = 100_000, 64, 65536
MAX_NAME = 1024


class _Bad(Exception):
    """A field ``path`` that breaks the schema, and why."""


def _where(path: str) -> str:
    return path or "the config"


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _Bad(f"{_where(path)} must be an integer in {lo}..{hi}, got {_show(value)}")
    return value


def _float(value: Any, path: str, lo: float, hi: float, *, lo_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > hi or value < lo or (lo_open and value == lo):
        bracket = "(" if lo_open else "["
        raise _Bad(f"{_where(path)} must be a number in {bracket}{lo:g}, {hi:g}], got {_show(value)}")
    return float(value)


def _str(value: Any, path: str, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise _Bad(f"{_where(path)} must be a string of at most {MAX_NAME} characters, got {_show(value)}")


def _list(value: Any, path: str, lo: int, hi: int) -> list:
    if not isinstance(value, list) or not lo <= len(value) <= hi:
        raise _Bad(f"{_where(path)} must be a list of {lo}..{hi} items, got {_show(value)}")
    return value


def _dict(value: Any, path: str, required: set[str], optional: set[str] = frozenset()) -> dict:
    if not isinstance(value, dict):
        raise _Bad(f"{_where(path)} must be an object, got {_show(value)}")
    prefix = f"{path}." if path else ""
    missing = sorted(required - value.keys())
    if missing:
        raise _Bad(f"{prefix}{missing[0]} is missing")
    unknown = sorted(value.keys() - required - optional)
    if unknown:
        raise _Bad(f"{prefix}{unknown[0]} is not a known field")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{type(value).__name__} {text[:40]}..."


def check_config(config: dict[str, Any], source: str) -> None:
    """Raise :class:`DinosawError` naming the first field of ``config`` outside the schema."""
    try:
        _check_config(config)
    except _Bad as exc:
        raise DinosawError(f"{source}: config.json: {exc}") from None


def _check_config(config: dict[str, Any]) -> None:
    _dict(config, "", {"filter_bank", "classes", "classifier", "channels", "max_samples_per_class", "vit"},
          {"dinosaw_deploy_version", "tile", "contrast", "normalize", "training", "class_prior",
           "intensity_histogram"})
    _str(config.get("dinosaw_deploy_version", ""), "dinosaw_deploy_version")
    _filter_bank(config["filter_bank"])
    classes = _list(config["classes"], "classes", 2, MAX_CLASSES)
    for i, entry in enumerate(classes):
        path = f"classes[{i}]"
        _dict(entry, path, {"index", "name", "colour", "source_value"})
        if _int(entry["index"], f"{path}.index", 1, MAX_CLASSES) != i + 1:
            raise _Bad(f"{path}.index must be {i + 1} (classes are numbered 1..K in order), got {entry['index']}")
        _str(entry["name"], f"{path}.name")
        for j, c in enumerate(_list(entry["colour"], f"{path}.colour", 3, 3)):
            _int(c, f"{path}.colour[{j}]", 0, 255)
        for j, v in enumerate(_list(entry["source_value"], f"{path}.source_value", 1, 4)):
            _int(v, f"{path}.source_value[{j}]", 0, 2**63 - 1)
    prior = config.get("class_prior")
    if prior is not None:
        for i, v in enumerate(_list(prior, "class_prior", len(classes), len(classes))):
            _float(v, f"class_prior[{i}]", 0.0, 1.0, lo_open=True)
    histogram = config.get("intensity_histogram")
    if histogram is not None:
        for i, v in enumerate(_list(histogram, "intensity_histogram", HISTOGRAM_BINS, HISTOGRAM_BINS)):
            _float(v, f"intensity_histogram[{i}]", 0.0, 1.0)
    fields = {f.name for f in dataclasses.fields(ClassifierParams)}
    classifier = _dict(config["classifier"], "classifier", fields)
    _int(classifier["max_depth"], "classifier.max_depth", 1, MAX_DEPTH)
    _float(classifier["learning_rate"], "classifier.learning_rate", 0.0, 1.0, lo_open=True)
    _int(classifier["rounds"], "classifier.rounds", 1, MAX_ROUNDS)
    _int(classifier["max_bin"], "classifier.max_bin", 2, MAX_BIN)
    _int(classifier["seed"], "classifier.seed", 0, 2**32 - 1)
    for i, name in enumerate(_list(config["channels"], "channels", 1, 100_000)):
        _str(name, f"channels[{i}]")
    _int(config.get("tile", MIN_TILE), "tile", MIN_TILE, MAX_TILE)
    _int(config["max_samples_per_class"], "max_samples_per_class", 1, 2**31 - 1)
    contrast = config.get("contrast")
    if contrast is not None:
        _dict(contrast, "contrast", {"grid", "clip_limit", "bins"})
        _int(contrast["grid"], "contrast.grid", 1, MAX_CLAHE_GRID)
        _float(contrast["clip_limit"], "contrast.clip_limit", 0.0, 1.0, lo_open=True)
        _int(contrast["bins"], "contrast.bins", 2, MAX_CLAHE_BINS)
    if config.get("normalize", "dtype") not in NORMALIZATIONS:
        raise _Bad(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {_show(config['normalize'])}")
    vit = config["vit"]
    if vit is not None:
        _dict(vit, "vit", {"model", "identity", "patch_size", "n_components"}, {"bias_jitter", "jitter_seed", "debias"})
        jitter = vit.get("bias_jitter", 0.0)
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise _Bad(f"vit.bias_jitter must be a number in [0, 1], got {_show(jitter)}")
        _int(vit.get("jitter_seed", 0), "vit.jitter_seed", 0, 2**63 - 1)
        debias = vit.get("debias")
        if debias is not None:
            _dict(debias, "vit.debias", {"sha256", "rank"})
            _int(debias["rank"], "vit.debias.rank", 0, MAX_EMBED_DIM)
        _str(vit["model"], "vit.model", nullable=True)
        identity = vit["identity"]
        if not isinstance(identity, str) or len(identity) != 64 or any(c not in "0123456789abcdef" for c in identity):
            raise _Bad(f"vit.identity must be a 64-digit hex sha256, got {_show(identity)}")
        _int(vit["patch_size"], "vit.patch_size", 1, MAX_PATCH_SIZE)
        _int(vit["n_components"], "vit.n_components", 1, MAX_COMPONENTS)
    if not isinstance(config.get("training", {}) or {}, dict):
        raise _Bad(f"training must be an object, got {_show(config['training'])}")


def _filter_bank(bank: Any) -> None:
    fields = {f.name for f in dataclasses.fields(FilterBankConfig)}
    _dict(bank, "filter_bank", {"sigmas", "truncate", "membrane_length", "membrane_angles"}, fields)
    for i, s in enumerate(_list(bank["sigmas"], "filter_bank.sigmas", 1, MAX_SIGMAS)):
        _float(s, f"filter_bank.sigmas[{i}]", 0.0, MAX_SIGMA)
    _float(bank["truncate"], "filter_bank.truncate", 0.0, MAX_TRUNCATE, lo_open=True)
    _int(bank["membrane_length"], "filter_bank.membrane_length", 1, MAX_MEMBRANE_LENGTH)
    _int(bank["membrane_angles"], "filter_bank.membrane_angles", 1, MAX_MEMBRANE_ANGLES)
    for key in ("structure_scales", "variance_sigmas"):  # absent in bundles from before issue 12
        for i, s in enumerate(_list(bank.get(key, []), f"filter_bank.{key}", 0, MAX_SIGMAS)):
            _float(s, f"filter_bank.{key}[{i}]", 0.0, MAX_SIGMA, lo_open=True)


def check_arrays(arrays: dict[str, np.ndarray], config: dict[str, Any], source: str) -> None:
    """The ViT arrays must exist exactly for a ViT model, with consistent shapes and finite values."""
    vit = config["vit"]
    expected = {"vit_mean", "vit_scale", "vit_components", "vit_lo", "vit_hi"} if vit else set()
    if vit and vit.get("debias") is not None:
        expected |= {"debias_mean", "debias_basis"}  # the subspace itself is checked by PositionalSubspace
    if set(arrays) != expected:
        raise DinosawError(f"{source}: arrays.npz holds {sorted(arrays)}, expected {sorted(expected)}")
    if not vit:
        return
    components = arrays["vit_components"]
    k = vit["n_components"]
    if components.ndim != 2 or components.shape[0] != k or not 1 <= components.shape[1] <= MAX_EMBED_DIM:
        raise DinosawError(f"{source}: arrays.npz vit_components has shape {components.shape}, expected "
                           f"({k}, embed_dim <= {MAX_EMBED_DIM})")
    shapes = {"vit_mean": (components.shape[1],), "vit_scale": (components.shape[1],), "vit_lo": (k,), "vit_hi": (k,)}
    if "debias_mean" in arrays:
        shapes["debias_mean"] = (components.shape[1],)
    for key, shape in shapes.items():
        if arrays[key].shape != shape:
            raise DinosawError(f"{source}: arrays.npz {key} has shape {arrays[key].shape}, expected {shape}")
    for key, value in arrays.items():
        if value.dtype.kind != "f" or not np.all(np.isfinite(value)):
            raise DinosawError(f"{source}: arrays.npz {key} must hold finite floats")
    if np.any(arrays["vit_scale"] == 0) or np.any(arrays["vit_hi"] <= arrays["vit_lo"]):
        raise DinosawError(f"{source}: arrays.npz vit_scale has zeros or vit_hi <= vit_lo")
