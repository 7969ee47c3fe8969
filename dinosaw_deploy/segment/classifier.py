"""The pixel classifier: XGBoost settings, import and device choice, class-prior estimation."""
from __future__ import annotations

import ctypes
from typing import Annotated, Any

import msgspec
import numpy as np
from msgspec import Meta

# Prediction runs one tile per worker thread, so each call uses one core (no OpenMP oversubscription).
PREDICT_PARAMS = {"device": "cpu", "nthread": 1}
# XGBoost keeps a gradient pair per training pixel and class: bound pixels x classes so a dense
# many-class label image cannot exhaust memory (3 classes keep the 200k-per-class default).
MAX_PIXEL_CLASS_PAIRS = 20_000_000
# Unlabelled pixels whose predictions estimate the class priors: PRIOR_PIXELS spread over all tiles of
# the training images, at least MIN_PRIOR_PER_TILE from each scribbled tile.
PRIOR_PIXELS, MIN_PRIOR_PER_TILE = 131_072, 16


MAX_ROUNDS, MAX_DEPTH, MAX_BIN = 100_000, 64, 65536


class ClassifierParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """XGBoost settings (no early stopping: a fixed number of rounds, so runs are reproducible); stored in
    model bundles, whose values are bounded by these types."""

    max_depth: Annotated[int, Meta(ge=1, le=MAX_DEPTH)] = 8
    # 40 rounds at 0.5 match 100 at 0.3 on EBC and ISB, in 0.4x the prediction time
    learning_rate: Annotated[float, Meta(gt=0, le=1)] = 0.5
    rounds: Annotated[int, Meta(ge=1, le=MAX_ROUNDS)] = 40
    max_bin: Annotated[int, Meta(ge=2, le=MAX_BIN)] = 256
    seed: Annotated[int, Meta(ge=0, le=2**32 - 1)] = 0

    def xgb(self, num_class: int, device: str, threads: int) -> dict[str, Any]:
        return {"objective": "multi:softprob", "num_class": num_class, "tree_method": "hist",
                "max_depth": self.max_depth, "eta": self.learning_rate, "max_bin": self.max_bin,
                "seed": self.seed, "device": device, "nthread": threads, "eval_metric": "mlogloss"}


def _xgboost():
    """Import xgboost (the environment is left alone: an application sharing its cores with other
    processes may set ``OMP_WAIT_POLICY=PASSIVE`` before OpenMP loads, as the CLI does)."""
    import xgboost

    return xgboost


def cuda_available() -> bool:
    """True when the installed xgboost was built with CUDA and the driver reports a GPU."""
    xgboost = _xgboost()
    if not xgboost.build_info().get("USE_CUDA"):
        return False
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return cuda.cuInit(0) == 0 and cuda.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def estimate_prior(probabilities: np.ndarray) -> np.ndarray:
    """Class frequencies of unlabelled pixels from a classifier trained with equal class weights:
    the mean predicted probability, (N, K) -> (K,) summing to 1.

    Scribbles label classes about equally, so a classifier trained on them assumes equal priors and
    over-predicts rare classes (thin cracks, pores); multiplying its probabilities by this prior
    (:func:`apply_prior`) corrects most of that. This is the first step of the EM of Saerens,
    Latinne & Decaestecker (2002, "Adjusting the outputs of a classifier to new a priori
    probabilities"); iterating to EM's fixed point gained 0.003 mIoU more on real SEM images but,
    with the soft probabilities of an under-trained model (10 rounds), drove a 0.6 % class to 0."""
    prior = np.asarray(probabilities, np.float64).mean(axis=0)
    return prior / prior.sum()


def apply_prior(probabilities: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """(K, ...) probabilities under equal priors -> under ``prior`` (renormalised per pixel), float32."""
    shape = (-1,) + (1,) * (probabilities.ndim - 1)
    adjusted = probabilities * np.asarray(prior, np.float32).reshape(shape)
    return (adjusted / np.maximum(adjusted.sum(axis=0, keepdims=True), 1e-30)).astype(np.float32)
