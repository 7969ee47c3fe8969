"""The probe's outputs: a JSON report and a PNG figure (per-channel R² bars, the most positional
channels as images, true vs predicted ramps). The figure needs matplotlib (the ``plot`` extra)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import atomic_path
from dinosaw_deploy.probe.positional import RAMP_TITLES, RAMPS, Positions, ProbeResult, predict_ramps, ramp_targets

DISPLAY_SIDE = 256  # longest side of the maps drawn in the figure, in tokens
FIGURE_CHANNELS = 4
FIGURE_RAMPS = ("x", "y")


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> Path:
    """Write the report as indented JSON (temp name + rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return path


def require_matplotlib() -> None:
    """Fail early, with the fix, when the figure cannot be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise DinosawError(
            "the probe figure needs matplotlib: pip install 'dinosaw-deploy[plot]' (or pass --no-figure)"
        ) from None


def display_maps(
    features, result: ProbeResult, positions: Positions, channels: list[int], side: int = DISPLAY_SIDE
) -> dict[str, Any]:
    """What the figure shows of one feature map, subsampled to ``side`` tokens: the given channels,
    the true ramps and repeat 0's predictions (the fitted probe applied to the subsampled tokens)
    with repeat 0's R² per ramp."""
    _, h, w = (int(s) for s in features.shape)
    stride = max(1, -(-max(h, w) // side))
    small = np.asarray(features[:, ::stride, ::stride], dtype=np.float32)
    rows, cols = np.mgrid[0:h:stride, 0:w:stride].astype(np.float64)
    u, v = positions(rows, cols)
    true = np.moveaxis(ramp_targets(np.asarray(u, np.float64), np.asarray(v, np.float64)), -1, 0)
    return {
        "stride": stride,
        "channels": {c: small[c] for c in channels},
        "true": true,
        "predicted": predict_ramps(small, result),
        "r2": result.r2[0],
    }


def write_figure(
    path: str | os.PathLike,
    summary: dict[str, Any],
    maps: dict[str, Any],
    name: str = "input 1",
    tile_local: bool = False,
) -> Path:
    """PNG: per-channel R² bar chart (top channels in red); the top channels and true vs predicted
    ramps (``tile_local``: inside the engine tile) of the input ``maps`` came from (``name``)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    channel_r2 = np.asarray(summary["channels"]["r2_xy"])
    top = [t["channel"] for t in summary["channels"]["top"]][:FIGURE_CHANNELS]
    ncols = max(FIGURE_CHANNELS, 2 * len(FIGURE_RAMPS))
    fig = plt.figure(figsize=(3.2 * ncols, 10), layout="constrained")
    grid = fig.add_gridspec(3, ncols, height_ratios=[1.0, 1.1, 1.1])

    bars = fig.add_subplot(grid[0, :])
    colors = np.full(len(channel_r2), "tab:blue", dtype=object)
    colors[top] = "tab:red"
    bars.bar(np.arange(len(channel_r2)), channel_r2, width=1.0, color=list(colors))
    bars.axhline(0, color="k", lw=0.5)
    bars.set_xlim(-0.5, len(channel_r2) - 0.5)
    bars.set_xlabel("channel")
    bars.set_ylabel("one-channel R² (x, y mean)")
    xy = summary["r2_xy"]
    bars.set_title(
        f"positional probe over {len(summary['sample_size'])} input(s): all-channel R²(x, y) = "
        f"{xy['mean']:.3f} ± {xy['std']:.3f}; one-channel R² below"
    )
    for c in top:
        bars.annotate(str(c), (c, channel_r2[c]), ha="center", va="bottom", fontsize=8, color="tab:red")

    for i, c in enumerate(top):
        ax = fig.add_subplot(grid[1, i])
        image = ax.imshow(maps["channels"][c], cmap="magma", interpolation="nearest")
        ax.set_title(f"{name}: channel {c}", fontsize=9)
        ax.set_axis_off()
        fig.colorbar(image, ax=ax, shrink=0.7)

    for i, ramp in enumerate(FIGURE_RAMPS):
        j = RAMPS.index(ramp)
        for k, (label, data) in enumerate((("true", maps["true"][j]), ("predicted", maps["predicted"][j]))):
            ax = fig.add_subplot(grid[2, 2 * i + k])
            image = ax.imshow(data, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            where = "tile-local " if tile_local else ""
            second = f"repeat 0, R² {maps['r2'][j]:.3f}" if label == "predicted" else name
            ax.set_title(f"{where}{RAMP_TITLES[ramp]} {label}\n{second}", fontsize=9)
            ax.set_axis_off()
            fig.colorbar(image, ax=ax, shrink=0.7)

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def write_compare_figure(path: str | os.PathLike, rows: list[tuple[dict[str, Any], np.ndarray, np.ndarray | None]],
                         name: str) -> Path:
    """PNG, one row per engine: one-channel R² of every channel (top ones in red, the all-channel R² in the
    title), the 3-component feature PCA of the first image (``name``) as RGB, and the labels predicted for it
    from its scribbles, when given."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dinosaw_deploy.tiling.preview import render_preview
    from dinosaw_deploy.tiling.store import ArrayGrid

    with_labels = any(labels is not None for _, _, labels in rows)
    ncols = 4 if with_labels else 3
    fig = plt.figure(figsize=(3.6 * ncols, 3.2 * len(rows)), layout="constrained")
    grid = fig.add_gridspec(len(rows), ncols)
    for i, (row, features, labels) in enumerate(rows):
        channel_r2 = np.asarray(row["channels"]["r2_xy"])
        top = [t["channel"] for t in row["channels"]["top"]][:FIGURE_CHANNELS]
        bars = fig.add_subplot(grid[i, :2])
        colors = np.full(len(channel_r2), "tab:blue", dtype=object)
        colors[top] = "tab:red"
        bars.bar(np.arange(len(channel_r2)), channel_r2, width=1.0, color=list(colors))
        bars.axhline(0, color="k", lw=0.5)
        bars.set_xlim(-0.5, len(channel_r2) - 0.5)
        bars.set_ylim(min(-0.1, float(channel_r2.min())), 1.0)
        bars.set_ylabel("one-channel R² (x, y)")
        xy = row["r2_xy"]
        bars.set_title(f"{row['engine']}: R²(x, y) = {xy['mean']:.3f} ± {xy['std']:.3f}", fontsize=9)
        pca = fig.add_subplot(grid[i, 2])
        pca.imshow(render_preview(ArrayGrid(features)), interpolation="nearest")
        pca.set_title(f"{name}: feature PCA", fontsize=9)
        pca.set_axis_off()
        if labels is not None:
            ax = fig.add_subplot(grid[i, 3])
            ax.imshow(labels, cmap="tab10", vmin=1, vmax=10, interpolation="nearest")
            ax.set_title(f"{name}: labels from its scribbles", fontsize=9)
            ax.set_axis_off()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
