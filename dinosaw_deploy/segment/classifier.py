"""The pixel classifier: XGBoost settings, import and device choice."""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

# Prediction runs one tile per worker thread, so each call uses one core (no OpenMP oversubscription).
PREDICT_PARAMS = {"device": "cpu", "nthread": 1}
# XGBoost keeps a gradient pair per training pixel and class: bound pixels x classes so a dense
# many-class label image cannot exhaust memory (3 classes keep the 200k-per-class default).
MAX_PIXEL_CLASS_PAIRS = 20_000_000


@dataclass
class ClassifierParams:
    """XGBoost settings (no early stopping: a fixed number of rounds, so runs are reproducible)."""

    max_depth: int = 8
    learning_rate: float = 0.3
    rounds: int = 100
    max_bin: int = 256
    seed: int = 0

    def xgb(self, num_class: int, device: str, threads: int) -> dict[str, Any]:
        return {"objective": "multi:softprob", "num_class": num_class, "tree_method": "hist",
                "max_depth": self.max_depth, "eta": self.learning_rate, "max_bin": self.max_bin,
                "seed": self.seed, "device": device, "nthread": threads, "eval_metric": "mlogloss"}


def _xgboost():
    """Import xgboost with OpenMP threads that sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``,
    unless set): spinning threads make training several times slower when other processes share
    the cores. Only effective if nothing loaded OpenMP earlier in the process."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
