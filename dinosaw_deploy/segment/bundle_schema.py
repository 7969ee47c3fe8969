"""The schema of a ``.dsw`` bundle's ``config.json`` and ``arrays.npz``: types and bounded ranges.

A bundle is untrusted input: every value that sizes an allocation or a loop (filter-bank sigmas,
membrane angles, CLAHE bins, tile, classes, PCA components, array shapes) is bounded by the type it is
converted to (:class:`BundleConfig` and the config types it holds: :class:`FilterBankConfig`,
:class:`ClassifierParams`, :class:`ClaheConfig`, :class:`LabelClass`) before anything is built from it,
and a refusal names the field, e.g. ``config.json: filter_bank.membrane_angles: expected `int` <= 180``.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from msgspec import Meta

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.intensity import HISTOGRAM_BINS, NORMALIZATIONS
from dinosaw_deploy.schema import Name, SchemaError, Sha256, convert
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.contrast import ClaheConfig
from dinosaw_deploy.segment.filters import FilterBankConfig
from dinosaw_deploy.segment.labels import MAX_CLASSES, LabelClass

MIN_TILE, MAX_TILE = 16, 4096
MAX_PATCH_SIZE, MAX_COMPONENTS, MAX_EMBED_DIM = 64, 1024, 8192
MAX_CHANNELS = 100_000
Fraction = Annotated[float, Meta(ge=0, le=1)]
Histogram = Annotated[list[Fraction], Meta(min_length=HISTOGRAM_BINS, max_length=HISTOGRAM_BINS)]
Normalize = Literal[NORMALIZATIONS]


class DebiasRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The positional subspace removed from the ViT features (its arrays are in ``arrays.npz``)."""

    sha256: Sha256
    rank: Annotated[int, Meta(ge=0, le=MAX_EMBED_DIM)]


class VitRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The engine whose features the model was trained on, and how they were reduced and set up."""

    model: Name | None
    identity: Sha256
    patch_size: Annotated[int, Meta(ge=1, le=MAX_PATCH_SIZE)]
    n_components: Annotated[int, Meta(ge=1, le=MAX_COMPONENTS)]
    bias_jitter: Fraction = 0.0
    jitter_seed: Annotated[int, Meta(ge=0, le=2**63 - 1)] = 0
    debias: DebiasRecord | None = None


class BundleConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``config.json``. Fields absent in older bundles default to what those bundles meant: no contrast,
    the dtype intensity rule, equal priors, no exposure check."""

    filter_bank: FilterBankConfig
    classes: Annotated[list[LabelClass], Meta(min_length=2, max_length=MAX_CLASSES)]
    classifier: ClassifierParams
    channels: Annotated[list[Name], Meta(min_length=1, max_length=MAX_CHANNELS)]
    max_samples_per_class: Annotated[int, Meta(ge=1, le=2**31 - 1)]
    vit: VitRecord | None
    dinosaw_deploy_version: Name = ""
    tile: Annotated[int, Meta(ge=MIN_TILE, le=MAX_TILE)] | None = None
    contrast: ClaheConfig | None = None
    normalize: Normalize = "dtype"
    training: dict[str, Any] | None = None
    class_prior: list[Annotated[float, Meta(gt=0, le=1)]] | None = None
    intensity_histogram: Histogram | None = None

    def __post_init__(self) -> None:
        for i, entry in enumerate(self.classes):
            if entry.index != i + 1:
                raise DinosawError(f"classes[{i}].index must be {i + 1} (classes are numbered 1..K in order), "
                                   f"got {entry.index}")
        if self.class_prior is not None and len(self.class_prior) != len(self.classes):
            raise DinosawError(f"class_prior must give {len(self.classes)} values (one per class), "
                               f"got {len(self.class_prior)}")


def stored_filter_bank(record: dict[str, Any]) -> dict[str, Any]:
    """A bundle's ``filter_bank`` record with the groups it predates (structure tensor, local variance) empty,
    so a model saved before they existed keeps its 58 channels."""
    return {"structure_scales": [], "variance_sigmas": [], **record}


def read_config(config: dict[str, Any], source: str) -> BundleConfig:
    """``config`` as a :class:`BundleConfig`, or one :class:`SchemaError` naming the first bad field."""
    if isinstance(config.get("filter_bank"), dict):
        config = {**config, "filter_bank": stored_filter_bank(config["filter_bank"])}
    return convert(config, BundleConfig, f"{source}: config.json")


def check_arrays(arrays: dict[str, np.ndarray], config: BundleConfig, source: str) -> None:
    """The ViT arrays must exist exactly for a ViT model, with consistent shapes and finite values."""
    vit = config.vit
    expected = {"vit_mean", "vit_scale", "vit_components", "vit_lo", "vit_hi"} if vit else set()
    if vit and vit.debias is not None:
        expected |= {"debias_mean", "debias_basis"}  # the subspace itself is checked by PositionalSubspace
    if set(arrays) != expected:
        raise SchemaError(f"{source}: arrays.npz holds {sorted(arrays)}, expected {sorted(expected)}")
    if not vit:
        return
    components = arrays["vit_components"]
    k = vit.n_components
    if components.ndim != 2 or components.shape[0] != k or not 1 <= components.shape[1] <= MAX_EMBED_DIM:
        raise SchemaError(f"{source}: arrays.npz vit_components has shape {components.shape}, expected "
                          f"({k}, embed_dim <= {MAX_EMBED_DIM})")
    shapes = {"vit_mean": (components.shape[1],), "vit_scale": (components.shape[1],), "vit_lo": (k,), "vit_hi": (k,)}
    if "debias_mean" in arrays:
        shapes["debias_mean"] = (components.shape[1],)
    for key, shape in shapes.items():
        if arrays[key].shape != shape:
            raise SchemaError(f"{source}: arrays.npz {key} has shape {arrays[key].shape}, expected {shape}")
    for key, value in arrays.items():
        if value.dtype.kind != "f" or not np.all(np.isfinite(value)):
            raise SchemaError(f"{source}: arrays.npz {key} must hold finite floats")
    if np.any(arrays["vit_scale"] == 0) or np.any(arrays["vit_hi"] <= arrays["vit_lo"]):
        raise SchemaError(f"{source}: arrays.npz vit_scale has zeros or vit_hi <= vit_lo")
