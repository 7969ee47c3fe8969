"""Fit the positional subspace of an engine's features on homogeneous scans (``dinosaw-deploy debias fit``).

On a homogeneous scan, what a token's features share with its position is the positional bias. Each channel
(centred per image) is regressed on a smooth 2D basis of the token's position (the cosines
``cos(pi i x) cos(pi j y)``, i, j < :data:`POSITION_FREQUENCIES`), pooled over the scans; the principal directions
of the fitted, position-explained part are the candidate subspace, strongest first. The rank is the smallest
that brings the probe (:func:`~dinosaw_deploy.probe.positional.fit_probes`: StandardScaler + Ridge on the x, y,
diagonal and radial ramps, fitted on half of the sampled tokens and scored on the other half) below
``target_r2``. The report records R² by rank, the share of feature variance removed, the share of the variance
position does not explain that is kept (the content: ~1 when only position was removed) and the per-token cosine
of debiased vs original features.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from dinosaw_deploy.engine.debias import PositionalSubspace
from dinosaw_deploy.engine.manifest import engine_identity
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import check_output, output_lock
from dinosaw_deploy.probe.positional import fit_probes, global_positions, ramp_targets

DEFAULT_MAX_RANK = 32
DEFAULT_TARGET_R2 = 0.02
TOKENS_PER_IMAGE = 4096


def _sample(maps: Sequence[np.ndarray], rng: np.random.Generator, per_image: int) -> tuple[np.ndarray, np.ndarray]:
    tokens, targets = [], []
    for features in maps:
        c, h, w = features.shape
        picks = rng.choice(h * w, size=min(per_image, h * w), replace=False)
        rows, cols = np.divmod(picks, w)
        tokens.append(np.asarray(features, dtype=np.float64).reshape(c, -1)[:, picks].T)
        targets.append(ramp_targets(*global_positions(h, w)(rows, cols)))
    return np.concatenate(tokens), np.concatenate(targets)


POSITION_FREQUENCIES = 8


def _position_basis(targets: np.ndarray) -> np.ndarray:
    """(n, F^2) cosines of the token positions (x = targets[:, 0], y = targets[:, 1]), the constant included."""
    u, v = targets[:, 0], targets[:, 1]
    k = np.arange(POSITION_FREQUENCIES)
    return (np.cos(np.pi * u[:, None, None] * k[:, None]) * np.cos(np.pi * v[:, None, None] * k[None, :])).reshape(
        len(u), -1)


def _probe_r2(fit: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """Held-out R²(x, y) of the probe fitted on ``fit`` (tokens, targets) and scored on ``test``."""
    weights, offset, _, _ = fit_probes(*fit)
    pred = test[0] @ weights[:, :2] + offset[:2]
    truth = test[1][:, :2]
    return float((1.0 - ((truth - pred) ** 2).sum(axis=0) / ((truth - truth.mean(axis=0)) ** 2).sum(axis=0)).mean())


def _project(tokens: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    return tokens - ((tokens - mean) @ basis) @ basis.T


def fit_subspace(
    maps: Sequence[np.ndarray],
    *,
    seed: int = 0,
    max_rank: int = DEFAULT_MAX_RANK,
    target_r2: float = DEFAULT_TARGET_R2,
    tokens_per_image: int = TOKENS_PER_IMAGE,
    source: dict | None = None,
) -> PositionalSubspace:
    """The positional subspace of (C, h, w) feature maps (at least 64 tokens in all); ``source`` goes into the
    report (e.g. the engine's identity and the scans)."""
    if not maps:
        raise DinosawError("no feature maps to fit a positional subspace on")
    if len({m.shape[0] for m in maps}) != 1:
        raise DinosawError("all feature maps must have the same number of channels")
    if not 1 <= max_rank <= maps[0].shape[0]:
        raise DinosawError(f"max_rank must be in 1..{maps[0].shape[0]}, got {max_rank}")
    rng = np.random.default_rng(seed)
    per_image = [_sample([m], rng, tokens_per_image) for m in maps]
    tokens = np.concatenate([t for t, _ in per_image])
    centred = np.concatenate([t - t.mean(axis=0) for t, _ in per_image])
    targets = np.concatenate([r for _, r in per_image])
    if len(tokens) < 64:
        raise DinosawError(f"{len(tokens)} tokens are too few to fit a positional subspace (need 64)")
    held = rng.permutation(len(tokens)) < len(tokens) // 2
    position = _position_basis(targets[~held])
    coefficients, *_ = np.linalg.lstsq(position, centred[~held], rcond=None)
    explained = position @ coefficients
    variance, directions = np.linalg.eigh(explained.T @ explained)
    directions = directions[:, np.argsort(-variance)]
    mean = tokens[~held].mean(axis=0)
    history = []
    for rank in range(max_rank + 1):
        basis = directions[:, :rank]
        history.append(_probe_r2((_project(tokens[~held], mean, basis), targets[~held]),
                                 (_project(tokens[held], mean, basis), targets[held])))
        if history[-1] < target_r2:
            break
    test = tokens[held]
    kept = _project(test, mean, basis)
    cosine = (kept * test).sum(axis=1) / np.maximum(np.linalg.norm(kept, axis=1) * np.linalg.norm(test, axis=1), 1e-12)
    total = ((centred[held]) ** 2).sum()
    removed = ((centred[held] @ basis) ** 2).sum() / total if total > 0 else 0.0
    content = centred[held] - _position_basis(targets[held]) @ coefficients  # what position does not explain
    content_total = (content**2).sum()
    content_kept = 1.0 - ((content @ basis) ** 2).sum() / content_total if content_total > 0 else 1.0
    report = {
        "rank": int(basis.shape[1]),
        "r2_xy_by_rank": history,
        "r2_xy_before": history[0],
        "r2_xy_after": history[-1],
        "reached_target": history[-1] < target_r2,
        "variance_removed": float(removed),
        "content_variance_kept": float(content_kept),
        "token_cosine_mean": float(cosine.mean()),
        "token_cosine_min": float(cosine.min()),
        "tokens": int(len(tokens)),
        "images": len(maps),
        "seed": seed,
        **({"source": source} if source else {}),
    }
    return PositionalSubspace(mean.astype(np.float32), basis.astype(np.float32), report)  # eigh: orthonormal


MAX_MAP_TOKENS = 1 << 20  # a stored feature map is read at a stride that keeps it below this many tokens


def _strided(features) -> np.ndarray:
    """A (C, h, w) feature array (a gigapixel store too) read every ``s``-th token of every ``s``-th row."""
    _, h, w = features.shape
    step = max(1, int(np.ceil(np.sqrt(h * w / MAX_MAP_TOKENS))))
    return np.asarray(features[:, ::step, ::step], dtype=np.float32)


def fit_debias(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    extractor=None,
    seed: int = 0,
    max_rank: int = DEFAULT_MAX_RANK,
    target_r2: float = DEFAULT_TARGET_R2,
    overwrite: bool = False,
    echo: Callable[[str], None] = lambda message: None,
) -> PositionalSubspace:
    """Fit the positional subspace of the features of ``inputs`` (images run through ``extractor``, or
    ``.npy``/``.zarr`` features) and write it to ``output`` (``.npz``)."""
    from dinosaw_deploy.probe.run import FEATURE_SUFFIXES, load_features, read_whole_image

    output, inputs = Path(output), [Path(p) for p in inputs]
    if not inputs:
        raise DinosawError("give the homogeneous scans (images or feature files) to fit the subspace on")
    if output.suffix != ".npz":
        raise DinosawError(f"output must end in .npz, got {output.name}")
    for path in inputs:
        if not path.exists():
            raise DinosawError(f"input not found: {path}")
    images = [p for p in inputs if p.suffix.lower() not in FEATURE_SUFFIXES]
    if images and extractor is None:
        raise DinosawError("image inputs need an engine (--engine)")
    if extractor is not None and extractor.debias is not None:
        raise DinosawError("fit the subspace on the engine's own features, not on debiased ones")
    check_output(output, inputs + ([Path(extractor.model_path)] if extractor is not None else []), overwrite)
    with output_lock([output]):
        maps = [extractor(read_whole_image(p, extractor)) if p in images else _strided(load_features(p, False)[0])
                for p in inputs]
        source = {"inputs": [str(p) for p in inputs]}
        if extractor is not None:
            source["engine"] = {"path": str(extractor.model_path), "model": extractor.manifest.get("model"),
                                "identity": engine_identity(extractor.manifest)}
        subspace = fit_subspace(maps, seed=seed, max_rank=max_rank, target_r2=target_r2, source=source)
        subspace.save(output)
    report = subspace.report
    echo(f"positional subspace of rank {report['rank']}: held-out R²(x,y) {report['r2_xy_before']:.3f} -> "
         f"{report['r2_xy_after']:.3f}; {100 * report['variance_removed']:.1f} % of the feature variance removed, "
         f"{100 * report['content_variance_kept']:.1f} % of the content variance kept; "
         f"token cosine debiased vs original {report['token_cosine_mean']:.4f} (min {report['token_cosine_min']:.4f})")
    if not report["reached_target"]:
        echo(f"warning: R²(x,y) is still {report['r2_xy_after']:.3f} after {report['rank']} directions "
             f"(target {target_r2}); raise --max-rank")
    echo(f"wrote {output}")
    return subspace
