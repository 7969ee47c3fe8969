"""Segmenter: XGBoost on classical (+ PCA-reduced ViT) features of scribbled pixels (method.md §5).

Training computes features only for the tiles (bounding boxes) that hold labelled pixels and keeps
only those pixels; prediction computes features tile by tile. The full per-pixel feature stack of a
large image never exists. Every tile is a pure function of (image region, fitted state).

>>> seg = Segmenter().fit(image, scribbles)      # classical features only
>>> labels = seg.predict(other_image)            # (H, W) uint8, classes 1..K
>>> prepared = seg.prepare(image)                # or: features computed once, reused by each call
>>> labels = prepared.labels((0, 512, 0, 1024))  # a box of it
>>> seg.save("model.dsw"); seg = Segmenter.load("model.dsw")
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy._version import __version__
from dinosaw_deploy.engine.debias import PositionalSubspace
from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.engine.manifest import engine_identity
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.box import Box
from dinosaw_deploy.image.intensity import DEFAULT_NORMALIZE, check_normalize, histogram_shift
from dinosaw_deploy.image.reader import RegionSource
from dinosaw_deploy.schema import to_builtins
from dinosaw_deploy.segment.booster_check import check_booster
from dinosaw_deploy.segment.bundle import Bundle, bundle_bytes, load_bundle, read_bundle, save_bundle
from dinosaw_deploy.segment.bundle_schema import VitRecord, check_arrays, read_config
from dinosaw_deploy.segment.classifier import (
    MAX_PIXEL_CLASS_PAIRS,
    MIN_PRIOR_PER_TILE,
    PREDICT_PARAMS,
    PRIOR_PIXELS,
    ClassifierParams,
    _xgboost,
    apply_prior,
    cuda_available,
    estimate_prior,
)
from dinosaw_deploy.segment.contrast import Clahe, ClaheConfig
from dinosaw_deploy.segment.filters import FilterBank, FilterBankConfig
from dinosaw_deploy.segment.labels import LabelClass, Scribbles, scribbles_from_array, subsample_many, unify_classes
from dinosaw_deploy.segment.postprocess import CRF_HALO, check_modal, dense_crf, modal_filter
from dinosaw_deploy.segment.prepared import PreparedImage
from dinosaw_deploy.segment.refine import GRID, grid_box, refined_labels
from dinosaw_deploy.segment.vit_channels import PcaFeatures
from dinosaw_deploy.tiling.cache import DEFAULT_CACHE_BYTES
from dinosaw_deploy.tiling.parallel import in_own_thread, map_ordered
from dinosaw_deploy.tiling.store import PatchGrid

DEFAULT_TILE = 512


def _feature_settings(vit: VitRecord, arrays: dict[str, np.ndarray],
                      path: str) -> tuple[PositionalSubspace | None, dict[str, Any]]:
    """The positional subspace and feature settings a bundle's ViT features were trained with (none before
    they existed)."""
    debias = None
    if vit.debias is not None:
        try:
            debias = PositionalSubspace(arrays["debias_mean"], arrays["debias_basis"])
        except DinosawError as exc:
            raise DinosawError(f"{path}: {exc}") from None
        if debias.sha256 != vit.debias.sha256:
            raise DinosawError(f"{path}: its positional subspace does not match its recorded sha256")
    return debias, {"bias_jitter": vit.bias_jitter, "jitter_seed": vit.jitter_seed,
                    "debias": None if debias is None else {"sha256": debias.sha256, "rank": debias.rank}}


def _configured(extractor: Any, wanted: dict[str, Any], debias: PositionalSubspace | None, path: str) -> Any:
    """``extractor`` set up as the model was trained (bias jitter, positional subspace); one whose own settings
    differ from the model's is refused rather than silently changed."""
    if extractor is None or not hasattr(extractor, "configured"):
        return extractor
    current = extractor.feature_settings
    if current == wanted:
        return extractor
    untouched = {"bias_jitter": 0.0, "jitter_seed": 0, "debias": None}
    if current != untouched:
        differ = ", ".join(f"{k} {current[k]} (model: {wanted[k]})" for k in wanted if current[k] != wanted[k])
        raise DinosawError(f"{path}: the model was trained with other feature settings than this extractor's: {differ}")
    return extractor.configured(bias_jitter=wanted["bias_jitter"], jitter_seed=wanted["jitter_seed"], debias=debias)


def _as_extractor(extractor: Any) -> Any:
    """None, a FeatureExtractor-like object (``run``, ``manifest``, ``patch_size``), or an engine path opened as one."""
    if isinstance(extractor, (str, os.PathLike)):
        return FeatureExtractor(extractor)
    missing = [name for name in ("run", "manifest", "patch_size") if extractor is not None and
               not hasattr(extractor, name)]
    if missing:
        raise DinosawError(f"extractor must be a FeatureExtractor, an engine path or None, not "
                           f"{type(extractor).__name__} (it has no {', '.join(missing)})")
    return extractor


class Segmenter:
    """Trainable scribble segmentation. Train with :meth:`fit` (arrays) or :meth:`fit_prepared`
    (images prepared once with :meth:`prepare`, any region source), predict with :meth:`predict`
    or a :class:`PreparedImage`'s ``labels(box)``, persist with :meth:`save` / :meth:`load`.

    Args:
        extractor: a ``FeatureExtractor`` (or the path of an engine, opened as one) to add PCA-reduced ViT
            channels; None = classical only.
        filter_bank: the classical filter-bank config (default: 74 channels).
        classifier: XGBoost settings (default: hist, depth 8, 40 rounds, eta 0.5, seed 0).
        tile: prediction / feature tile size in px.
        max_samples_per_class: training pixels kept per class (random, seeded) at most; fewer
            with many classes, so that pixels x classes <= ``MAX_PIXEL_CLASS_PAIRS``.
        contrast: optional CLAHE before the filter bank (:mod:`dinosaw_deploy.segment.contrast`); None = off.
        normalize: how each image's intensities map to [0, 1], fitted per image (training, prediction,
            each live frame): ``dtype``, ``minmax``, ``percentile`` or ``zscore``
            (:mod:`dinosaw_deploy.image.intensity`); the same range feeds the ViT engine.
        estimate_prior: estimate the class frequencies of the training images from the predictions
            of unlabelled pixels (:func:`~dinosaw_deploy.segment.classifier.estimate_prior`) and weigh
            every prediction with them; False = equal priors (as models saved before issue 12).
        threads: CPU threads (default: all cores).
        device: ``auto`` (CUDA when xgboost has it and a GPU is present), ``cpu`` or ``cuda``.
    """

    def __init__(
        self,
        *,
        extractor: Any = None,
        filter_bank: FilterBankConfig | None = None,
        classifier: ClassifierParams | None = None,
        tile: int = DEFAULT_TILE,
        max_samples_per_class: int = 200_000,
        n_components: int = 9,
        contrast: ClaheConfig | None = None,
        normalize: str = DEFAULT_NORMALIZE,
        estimate_prior: bool = True,
        threads: int | None = None,
        device: str = "auto",
    ) -> None:
        if tile < 16:
            raise DinosawError(f"tile must be >= 16 px, got {tile}")
        if device not in ("auto", "cpu", "cuda"):
            raise DinosawError(f"device must be auto, cpu or cuda, not {device!r}")
        self.extractor = _as_extractor(extractor)
        self.bank = FilterBank(filter_bank)
        self.classifier = classifier or ClassifierParams()
        self.tile = tile
        self.max_samples_per_class = max_samples_per_class
        self.n_components = n_components
        self.contrast = contrast
        self.normalize = check_normalize(normalize)
        self.estimate_prior = estimate_prior
        self.class_prior: np.ndarray | None = None
        self.intensity_histogram: np.ndarray | None = None
        self.threads = threads or os.cpu_count() or 1
        self.device = device
        self.booster = None
        self.pca: PcaFeatures | None = None
        self.label_classes: list[LabelClass] = []
        self.engine: dict[str, Any] | None = None
        self.debias: PositionalSubspace | None = None  # projected out of the ViT features (from the extractor)
        self.training: dict[str, Any] = {}

    # -- features -------------------------------------------------------------------------
    @property
    def channel_names(self) -> tuple[str, ...]:
        vit = self.pca.names if self.pca is not None else ()
        return self.bank.names + vit

    def prepare(self, image: np.ndarray | RegionSource, *, intensity_range: tuple[float, float] | None = None,
                contrast: Clahe | None = None, grid: PatchGrid | None = None,
                cache_bytes: int = DEFAULT_CACHE_BYTES) -> PreparedImage:
        """``image`` as this model sees it, with a feature cache: see :class:`PreparedImage`."""
        return PreparedImage(self, image, intensity_range=intensity_range, contrast=contrast, grid=grid,
                             cache_bytes=cache_bytes)

    # -- training -------------------------------------------------------------------------
    def fit(self, image: np.ndarray | Sequence[np.ndarray],
            labels: np.ndarray | Scribbles | Sequence[np.ndarray | Scribbles]) -> Segmenter:
        """Train on in-memory image(s) and their scribbles (label arrays or :class:`Scribbles`): one
        image and its labels, or lists of both (one classifier for all; see :meth:`fit_sources`)."""
        images = [image] if isinstance(image, np.ndarray) else list(image)
        labels = [labels] if isinstance(labels, (np.ndarray, Scribbles)) else list(labels)
        if not images or len(images) != len(labels):
            raise DinosawError(f"got {len(images)} images and {len(labels)} label images; pass one per image")
        items = []
        for array, lab in zip(images, labels):
            scribbles = lab if isinstance(lab, Scribbles) else scribbles_from_array(lab)
            items.append((self.prepare(np.asarray(array), cache_bytes=0), scribbles))
        return self.fit_prepared(items)

    def fit_prepared(
        self, items: Sequence[tuple[PreparedImage, Scribbles]],
        progress: Callable[[int, int], None] | None = None,
    ) -> Segmenter:
        """Train one classifier on several prepared images (:meth:`prepare`) and their scribbles.

        Each image keeps its own intensity rule (dtype range or fitted range, optional CLAHE fitted
        on that image); the classes are the sorted union of the label values
        of all label files (:func:`unify_classes`); at most ``max_samples_per_class`` pixels per class
        are drawn over all images together; the ViT PCA is fitted on tokens pooled from every grid."""
        xgboost = _xgboost()
        if not items:
            raise DinosawError("no training images")
        for prepared, scribbles in items:
            if prepared.segmenter is not self:
                raise DinosawError("an image prepared for another segmenter; prepare it with this one")
            if scribbles.shape != prepared.shape:
                raise DinosawError(f"labels are {scribbles.shape} but the image is {prepared.shape}")
        images = [prepared for prepared, _ in items]
        scribbles = unify_classes([s for _, s in items])
        self.label_classes = list(scribbles[0].label_classes)
        self.pca = None
        if self.extractor is not None:
            grids = [prepared.grid for prepared in images]
            self.engine = {"model": self.extractor.manifest.get("model"),
                           "identity": engine_identity(self.extractor.manifest),
                           "patch_size": int(self.extractor.patch_size),
                           **getattr(self.extractor, "feature_settings", {})}
            self.debias = getattr(self.extractor, "debias", None)
            self.pca = PcaFeatures.fit(grids, n_components=self.n_components, patch_size=self.extractor.patch_size,
                                       seed=self.classifier.seed)
        k = len(self.label_classes)
        per_class = min(self.max_samples_per_class, max(1, MAX_PIXEL_CLASS_PAIRS // k**2))
        samples = subsample_many(scribbles, per_class, seed=self.classifier.seed)
        groups = [self._tile_groups(prepared, sample) for prepared, sample in zip(images, samples)]
        # per tile of the images, not of the scribbled tiles: a stroke in a new tile then leaves the other
        # tiles' samples (and their cached feature rows) as they were
        image_tiles = sum(-(-p.shape[0] // self.tile) * -(-p.shape[1] // self.tile) for p in images)
        per_tile = max(MIN_PRIOR_PER_TILE, PRIOR_PIXELS // image_tiles) if self.estimate_prior else 0
        gathered = [self._gather(prepared, sample, tiles, progress, per_tile)
                    for prepared, sample, tiles in zip(images, samples, groups)]
        x = np.concatenate([g[0] for g in gathered])
        y = np.concatenate([g[1] for g in gathered])
        counts = np.bincount(y, minlength=k)
        if np.count_nonzero(counts) < 2:
            raise DinosawError("only one class is labelled over all images; scribble at least two classes")
        weights = (len(y) / (k * np.maximum(counts, 1)))[y].astype(np.float32)
        device = self._device()
        params = self.classifier.xgb(k, device, self.threads)
        unlabelled = np.concatenate([g[2] for g in gathered]) if self.estimate_prior else None

        def boost() -> tuple[Any, np.ndarray | None]:
            matrix = xgboost.DMatrix(x, label=y, weight=weights, nthread=self.threads)
            booster = xgboost.train(params, matrix, num_boost_round=self.classifier.rounds)
            prior = None if unlabelled is None else estimate_prior(booster.inplace_predict(unlabelled))
            booster.set_param(PREDICT_PARAMS)
            return booster, prior

        self.booster, prior = in_own_thread(boost)  # its OpenMP threads end with it (see in_own_thread)
        self.class_prior = None if prior is None else prior.astype(np.float32)
        self.intensity_histogram = np.mean([prepared.intensity_histogram() for prepared in images], axis=0)
        labelled = np.sum([s.counts() for s in scribbles], axis=0)
        self.training = {"pixels_labelled": labelled.tolist(), "pixels_used": counts.tolist(), "device": device,
                         "images": len(items)}
        return self

    def _device(self) -> str:
        if self.device == "auto":
            return "cuda" if cuda_available() else "cpu"
        if self.device == "cuda" and not cuda_available():
            raise DinosawError("device cuda requested but no CUDA GPU / CUDA-enabled xgboost is available")
        return self.device

    def _tile_groups(self, prepared: PreparedImage, sample: Scribbles) -> list[np.ndarray]:
        """Indices of ``sample``'s pixels grouped by prediction tile."""
        tiles_x = -(-prepared.shape[1] // self.tile)
        key = (sample.ys // self.tile).astype(np.int64) * tiles_x + sample.xs // self.tile
        order = np.argsort(key, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0])
        return np.split(order, starts[1:]) if len(order) else []

    def _gather(self, prepared: PreparedImage, sample: Scribbles, groups: list[np.ndarray],
                progress: Callable[[int, int], None] | None,
                unlabelled: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Features at the sampled labelled pixels, one labelled prediction tile (``groups``:
        :meth:`_tile_groups`) at a time, as computed for that tile (the box its label prediction reads,
        :func:`~dinosaw_deploy.segment.refine.grid_box`, so a tile already predicted in a session costs no
        filter bank), and of up to ``unlabelled`` random pixels of that box (seeded by its position)."""
        x = np.empty((len(sample.ys), len(self.channel_names)), dtype=np.float32)
        height, width = prepared.shape

        def work(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            ys, xs = sample.ys[idx], sample.xs[idx]
            y0, x0 = int(ys[0]) // self.tile * self.tile, int(xs[0]) // self.tile * self.tile
            box = grid_box((y0, min(y0 + self.tile, height), x0, min(x0 + self.tile, width)), prepared.shape)
            h, w = box[1] - box[0], box[3] - box[2]
            rng = np.random.default_rng((self.classifier.seed, *box))
            pick = np.sort(rng.choice(h * w, min(unlabelled, h * w), replace=False))
            rows = prepared.pixel_features(box, np.r_[ys, box[0] + pick // w], np.r_[xs, box[2] + pick % w])
            return idx, rows[: len(ys)], rows[len(ys) :]

        others = []
        for done, (idx, rows, extra) in enumerate(map_ordered(work, groups, self.threads), start=1):
            x[idx] = rows
            others.append(extra)
            if progress:
                progress(done, len(groups))
        unlabelled_rows = np.concatenate(others) if others else np.empty((0, x.shape[1]), np.float32)
        return x, (sample.classes.astype(np.int64) - 1), unlabelled_rows

    # -- prediction -----------------------------------------------------------------------
    def intensity_shift(self, prepared: PreparedImage) -> float | None:
        """How far ``prepared``'s intensity histogram lies from the training images' (earth mover's
        distance over the normalised range, :func:`~dinosaw_deploy.image.intensity.histogram_shift`);
        None for a model saved without the training histogram."""
        if self.intensity_histogram is None:
            return None
        return histogram_shift(prepared.intensity_histogram(), self.intensity_histogram)

    def check_fitted(self) -> None:
        """Refuse to predict with a model that was never trained."""
        if self.booster is None:
            raise DinosawError("the segmenter is not trained: call fit() or Segmenter.load()")

    def _classify(self, features: np.ndarray) -> np.ndarray:
        """(n, C) pixel features -> (K, n) float32 class probabilities under the class prior."""
        probs = np.asarray(self.booster.inplace_predict(features), np.float32).T
        return probs if self.class_prior is None else apply_prior(probs, self.class_prior)

    def predict_box(self, prepared: PreparedImage, box: Box, *, modal: int = 0, crf: bool = False,
                    exact: bool = False, probabilities: bool = True, preview: bool = False
                    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(labels (h, w) uint8 1..K, probabilities (K, h, w) float32 or None) of ``box`` of a prepared image.

        The labels come from a coarse grid refined near class boundaries
        (:mod:`~dinosaw_deploy.segment.refine`: about 4x less classifier time, on real micrographs the
        same labels as classifying every pixel on > 99.96 % of the pixels); ``exact``: the most probable
        class of every pixel. ``probabilities``: every pixel's class probabilities as well (else None). Post-processing
        reads a halo around the box (``modal`` px for the majority filter, 64 px for the CRF) so a tile's
        labels equal the whole image's. ``preview``: only the grid is classified and each grid pixel's
        class and probabilities fill its cell, a ``GRID``²-times cheaper first look (no post-processing;
        at the grid pixels the labels are those of the full prediction)."""
        self.check_fitted()
        check_modal(modal)
        if preview and (modal or crf):
            raise DinosawError("a preview has no modal filter or CRF")
        y0, y1, x0, x1 = box
        pad = modal + (CRF_HALO if crf else 0)
        height, width = prepared.shape
        outer = grid_box((max(y0 - pad, 0), min(y1 + pad, height), max(x0 - pad, 0), min(x1 + pad, width)),
                         prepared.shape)
        feats = prepared.features(outer)
        c, h, w = feats.shape
        probs = None
        if preview or probabilities or exact or crf:
            stride = GRID if preview else 1
            sampled = feats[:, ::stride, ::stride]
            probs = self._classify(sampled.reshape(c, -1).T).reshape(-1, *sampled.shape[1:])
            if preview:
                probs = np.repeat(np.repeat(probs, GRID, axis=1), GRID, axis=2)[:, :h, :w]
            probs = np.ascontiguousarray(probs)
        if crf:
            labels = dense_crf(probs, prepared.gray[outer[0] : outer[1], outer[2] : outer[3]])
        elif exact or preview:
            labels = (probs.argmax(axis=0) + 1).astype(np.uint8)
        else:
            known = probs

            def classify(ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
                return self._classify(feats[:, ys, xs].T) if known is None else known[:, ys, xs]

            labels = (refined_labels(classify, (h, w)) + 1).astype(np.uint8)
        if modal:
            labels = modal_filter(labels, modal, len(self.label_classes))
        inner = (slice(y0 - outer[0], y1 - outer[0]), slice(x0 - outer[2], x1 - outer[2]))
        return labels[inner], (probs[(slice(None),) + inner] if probabilities else None)

    def predict_tiles(self, prepared: PreparedImage, boxes: Iterable[Box], *, modal: int = 0, crf: bool = False,
                      exact: bool = False, probabilities: bool = True
                      ) -> Iterator[tuple[Box, np.ndarray, np.ndarray | None]]:
        """(box, labels, probabilities or None) for every box, in order, computed on :attr:`threads` threads
        (the options: :meth:`predict_box`)."""
        self.check_fitted()
        return map_ordered(lambda box: (box, *self.predict_box(prepared, box, modal=modal, crf=crf, exact=exact,
                                                               probabilities=probabilities)), boxes, self.threads)

    def predict_proba(self, image: np.ndarray, *, grid: PatchGrid | None = None) -> np.ndarray:
        """(K, H, W) float32 class probabilities of an in-memory image (``grid``: its patch features,
        if already computed)."""
        self.check_fitted()
        return self.prepare(np.asarray(image), grid=grid, cache_bytes=0).probabilities()

    def predict(self, image: np.ndarray, *, modal: int = 0, crf: bool = False,
                grid: PatchGrid | None = None) -> np.ndarray:
        """(H, W) uint8 labels 1..K of an in-memory image (``grid``: its patch features, if already
        computed, e.g. to time the engine apart)."""
        self.check_fitted()
        return self.prepare(np.asarray(image), grid=grid, cache_bytes=0).labels(modal=modal, crf=crf)

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the trained model as a ``.dsw`` bundle (see :mod:`dinosaw_deploy.segment.bundle`)."""
        return save_bundle(path, self._bundle())

    def to_bytes(self) -> bytes:
        """The trained model as the bytes of a ``.dsw`` bundle (for :meth:`from_bytes`, e.g. on a worker)."""
        return bundle_bytes(self._bundle())

    def _bundle(self) -> Bundle:
        self.check_fitted()
        config = {
            "dinosaw_deploy_version": __version__,
            "filter_bank": to_builtins(self.bank.config),
            "classes": [c.to_dict() for c in self.label_classes],
            "classifier": to_builtins(self.classifier),
            "channels": list(self.channel_names),
            "tile": self.tile,
            "max_samples_per_class": self.max_samples_per_class,
            "contrast": None if self.contrast is None else to_builtins(self.contrast),
            "normalize": self.normalize,
            "class_prior": None if self.class_prior is None else self.class_prior.tolist(),
            "intensity_histogram": None if self.intensity_histogram is None else self.intensity_histogram.tolist(),
            "vit": None if self.pca is None else {**self.engine, "n_components": self.pca.num_components},
            "training": self.training,
        }
        arrays = {} if self.pca is None else self.pca.to_arrays()
        if self.pca is not None and self.debias is not None:
            arrays.update(debias_mean=self.debias.mean, debias_basis=self.debias.basis)
        return Bundle(config, arrays, bytes(self.booster.save_raw("json")))

    @classmethod
    def load(cls, path: str | os.PathLike, extractor: Any = None, **options: Any) -> Segmenter:
        """A trained segmenter from a ``.dsw`` bundle; ``extractor`` must be the model's engine
        (same weights; fp32 or fp16) when the bundle uses ViT features. The bundle is untrusted:
        its config, arrays and booster structure are validated before anything is built from them."""
        return cls.from_bundle(load_bundle(path), str(path), extractor, **options)

    @classmethod
    def from_bytes(cls, data: bytes, extractor: Any = None, **options: Any) -> Segmenter:
        """A trained segmenter from :meth:`to_bytes` (validated as :meth:`load` validates a file)."""
        return cls.from_bundle(read_bundle(data), "model bundle", extractor, **options)

    @classmethod
    def from_bundle(cls, bundle: Bundle, path: str, extractor: Any = None, **options: Any) -> Segmenter:
        """A trained segmenter from a read :class:`Bundle` (``path`` names it in errors), validated as
        :meth:`load` validates a file."""
        xgboost = _xgboost()
        config = read_config(bundle.config, path)
        check_arrays(bundle.arrays, config, path)
        vit = config.vit
        seg = cls(extractor=extractor, filter_bank=config.filter_bank, classifier=config.classifier,
                  tile=config.tile or DEFAULT_TILE, max_samples_per_class=config.max_samples_per_class,
                  contrast=config.contrast, normalize=config.normalize, **options)
        seg.label_classes = list(config.classes)
        seg.estimate_prior = config.class_prior is not None
        seg.class_prior = None if config.class_prior is None else np.asarray(config.class_prior, np.float32)
        seg.training = dict(config.training or {})
        histogram = config.intensity_histogram
        seg.intensity_histogram = None if histogram is None else np.asarray(histogram, np.float64)
        if vit is not None:
            seg.engine = {"model": vit.model, "identity": vit.identity, "patch_size": vit.patch_size}
            seg.pca = PcaFeatures.from_arrays(bundle.arrays, vit.patch_size)
            if seg.extractor is not None and engine_identity(seg.extractor.manifest) != vit.identity:
                raise DinosawError(
                    f"{path}: trained with the features of engine {vit.model!r} (identity "
                    f"{vit.identity[:12]}); {seg.extractor.model_path} is a different model"
                )
            seg.debias, settings = _feature_settings(vit, bundle.arrays, path)
            seg.engine.update(settings)
            seg.extractor = _configured(seg.extractor, settings, seg.debias, path)
        elif extractor is not None:
            seg.extractor = None  # a classical model ignores the engine
        if list(config.channels) != list(seg.channel_names):
            raise DinosawError(f"{path}: the bundle's channels do not match its filter-bank / ViT settings")
        check_booster(bundle.classifier, num_class=len(seg.label_classes), num_feature=len(seg.channel_names),
                      source=f"{path}: {bundle.classifier_name}", ubjson=bundle.classifier_ubjson)
        booster = xgboost.Booster()
        try:
            booster.load_model(bytearray(bundle.classifier))
        except xgboost.core.XGBoostError as exc:
            raise DinosawError(f"{path}: unreadable classifier ({str(exc).splitlines()[0]})") from None
        booster.set_param(PREDICT_PARAMS)
        if booster.num_features() != len(seg.channel_names):
            raise DinosawError(f"{path}: the classifier's features do not match the bundle's channels")
        seg.booster = booster
        return seg
