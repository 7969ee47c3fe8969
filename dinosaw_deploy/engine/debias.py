"""Positional-subspace removal at inference (RASA's idea): project a fitted subspace out of every feature vector.

A :class:`PositionalSubspace` is a mean and an orthonormal basis ``Q`` (C, k) of the directions in which a
linear probe reads a token's position (fitted by :func:`dinosaw_deploy.probe.debias.fit_subspace`);
``f -> f - ((f - mean) Q) Q^T`` removes them and leaves every direction orthogonal to them unchanged.
Saved as ``.npz`` (``mean``, ``basis``, ``report`` as JSON text), read back with the same size, shape, finiteness
and orthonormality checks as any untrusted input.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import atomic_write_bytes, read_npz

MAX_FILE_BYTES = 64 << 20
ORTHONORMAL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class PositionalSubspace:
    """``mean`` (C,) and orthonormal ``basis`` (C, k) float32; ``report`` says how it was fitted."""

    mean: np.ndarray
    basis: np.ndarray
    report: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float32)
        basis = np.asarray(self.basis, dtype=np.float32)
        if mean.ndim != 1 or basis.ndim != 2 or basis.shape[0] != mean.shape[0] or basis.shape[1] > mean.shape[0]:
            raise DinosawError(f"a positional subspace needs mean (C,) and basis (C, k <= C); got {mean.shape} "
                               f"and {basis.shape}")
        if not (np.isfinite(mean).all() and np.isfinite(basis).all()):
            raise DinosawError("a positional subspace must be finite")
        gram = basis.T.astype(np.float64) @ basis
        if basis.shape[1] and np.abs(gram - np.eye(basis.shape[1])).max() > ORTHONORMAL_TOLERANCE:
            raise DinosawError("a positional subspace's basis must be orthonormal")
        for name, value in (("mean", mean), ("basis", basis)):
            value.flags.writeable = False
            object.__setattr__(self, name, value)

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    @property
    def sha256(self) -> str:
        """What identifies the transform (its arrays, not the report)."""
        return hashlib.sha256(self.mean.tobytes() + self.basis.tobytes()).hexdigest()

    def apply(self, features: np.ndarray) -> np.ndarray:
        """(B, C, h, w) or (C, h, w) float32 -> the same shape with the subspace projected out."""
        if features.shape[-3] != self.channels:
            raise DinosawError(f"the positional subspace is for {self.channels}-channel features, "
                               f"these have {features.shape[-3]}")
        if not self.rank:
            return features
        moved = np.moveaxis(features, -3, -1)
        coords = (moved - self.mean) @ self.basis
        return np.ascontiguousarray(np.moveaxis(moved - coords @ self.basis.T, -1, -3), dtype=np.float32)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        report = np.frombuffer(json.dumps(self.report).encode(), dtype=np.uint8)  # bytes: no unicode dtype to read
        np.savez(buffer, mean=self.mean, basis=self.basis, report=report)
        return buffer.getvalue()

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "positional subspace") -> "PositionalSubspace":
        arrays = read_npz(data, source, max_arrays=3, max_array_bytes=MAX_FILE_BYTES)
        if set(arrays) != {"mean", "basis", "report"}:
            raise DinosawError(f"{source}: not a positional subspace (arrays {sorted(arrays)})")
        mean, basis = arrays["mean"], arrays["basis"]
        if mean.dtype.kind != "f" or basis.dtype.kind != "f":
            raise DinosawError(f"{source}: a positional subspace holds float arrays")
        try:
            report = json.loads(arrays["report"].tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DinosawError(f"{source}: its report is not JSON") from None
        try:
            return cls(mean, basis, report if isinstance(report, dict) else {})
        except DinosawError as exc:
            raise DinosawError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PositionalSubspace":
        path = Path(path)
        if not path.is_file():
            raise DinosawError(f"positional subspace not found: {path} (fit one with `dinosaw-deploy debias fit`)")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DinosawError(f"{path}: too large for a positional subspace (> {MAX_FILE_BYTES >> 20} MiB)")
        return cls.from_bytes(path.read_bytes(), str(path))
