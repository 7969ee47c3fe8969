"""One rule for trusting an exported artifact: compare its features with a reference's.

Every export step checks its output against a reference on the same inputs (the ONNX against
PyTorch, a TensorRT plan against ONNX Runtime on the CPU) before the artifact gets its final name.
What counts as agreement depends only on the artifact's precision, in one table:
fp32 must match to an absolute tolerance; reduced precisions must keep every token's direction
(per-token cosine over channels, flat images included among the cases). Adding a precision is one
row (as ``int8`` is).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError

METRICS = ("max_abs_error", "min_token_cosine")


@dataclass(frozen=True)
class Criterion:
    """Agreement means ``max_abs_error <= bound`` or ``min_token_cosine >= bound``."""

    metric: str
    bound: float

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; expected one of {METRICS}")

    def passes(self, value: float) -> bool:
        return value <= self.bound if self.metric == "max_abs_error" else value >= self.bound

    def __str__(self) -> str:
        if self.metric == "max_abs_error":
            return f"max abs error <= {self.bound}"
        return f"min per-token cosine >= {self.bound}"


# The artifact's precision -> what it must reach against its reference.
CRITERIA: dict[str, Criterion] = {
    "fp32": Criterion("max_abs_error", 1e-4),
    "fp16": Criterion("min_token_cosine", 0.999),
    "fp16-flag": Criterion("min_token_cosine", 0.999),  # TensorRT 10: fp32 ONNX + BuilderFlag.FP16
    "int8": Criterion("min_token_cosine", 0.99),  # ONNX Runtime dynamic quantisation (export/quantize.py)
}
# A TensorRT plan against ONNX Runtime (CPU): same table, but GPU fp32 kernels sum in another
# order than the CPU's (TF32 is off), so fp32 plans get 1e-3.
PLAN_CRITERIA: dict[str, Criterion] = {**CRITERIA, "fp32": Criterion("max_abs_error", 1e-3)}


def token_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity per token of two (B, C, h, w) feature maps: shape (B, h, w)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = (a64 * b64).sum(axis=1)
    den = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return num / np.maximum(den, 1e-12)


def compare(reference: np.ndarray, candidate: np.ndarray, case: str) -> dict[str, float]:
    """Both metrics for one case; a shape mismatch is an error (``case`` names it)."""
    if candidate.shape != reference.shape:
        raise DinosawError(f"{case}: output shape {candidate.shape} != reference {reference.shape}")
    return {
        "max_abs_error": float(np.abs(candidate - reference).max()),
        "min_token_cosine": float(token_cosine(candidate, reference).min()),
    }


@dataclass(frozen=True)
class Verdict:
    """The worst case of each metric and whether the precision's criterion holds."""

    cases: dict[str, dict[str, Any]]
    criterion: Criterion
    max_abs_error: float
    min_token_cosine: float

    @property
    def passed(self) -> bool:
        return self.criterion.passes(getattr(self, self.criterion.metric))

    def report(self) -> dict[str, Any]:
        """What manifests record under ``verification`` (plus the caller's own keys)."""
        return {"cases": self.cases, "max_abs_error": self.max_abs_error, "min_token_cosine": self.min_token_cosine,
                "criterion": str(self.criterion), "passed": self.passed}

    def require(self, artifact: str, reference: str) -> None:
        """Raise one clear error unless passed: the artifact must not be kept."""
        if not self.passed:
            raise DinosawError(
                f"{artifact} disagrees with {reference} (max abs {self.max_abs_error:.3g}, min token cosine "
                f"{self.min_token_cosine:.6f}; needs {self.criterion}); not keeping it"
            )


def verify_outputs(
    cases: Mapping[str, Mapping[str, Any]], precision: str, criteria: Mapping[str, Criterion] = CRITERIA
) -> Verdict:
    """Judge per-case metrics (from :func:`compare`, maybe with extra keys) for an artifact of ``precision``."""
    if not cases:
        raise DinosawError("nothing to verify: no cases")
    if precision not in criteria:
        raise DinosawError(f"no verification criterion for precision {precision!r} (known: {', '.join(criteria)})")
    return Verdict(
        cases={name: dict(case) for name, case in cases.items()},
        criterion=criteria[precision],
        max_abs_error=max(float(c["max_abs_error"]) for c in cases.values()),
        min_token_cosine=min(float(c["min_token_cosine"]) for c in cases.values()),
    )
