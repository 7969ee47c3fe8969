"""The options of a scan job, as small values checked when they are made.

:class:`ModelOptions` says how a new model is trained, :class:`PredictOptions` what a prediction writes
and how it is smoothed, :class:`RunOptions` how a job runs (overwriting, threads, progress, where its
tiled stages run). Every front door (CLI, Python API, viewer) builds these and hands them on.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.image.intensity import DEFAULT_NORMALIZE, check_normalize
from dinosaw_deploy.preflight import DEFAULT_MAX_PIXELS
from dinosaw_deploy.schema import convert, to_builtins
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.contrast import ClaheConfig
from dinosaw_deploy.segment.postprocess import check_modal

if TYPE_CHECKING:
    from dinosaw_deploy.engine.extractor import FeatureExtractor
    from dinosaw_deploy.image.reader import ImageReader
    from dinosaw_deploy.segment.merger import ZarrMerger
    from dinosaw_deploy.segment.prepared import PreparedImage
    from dinosaw_deploy.segment.segmenter import Segmenter

Echo = Callable[[str], None]
Progress = Callable[[int, int], None]
CONTRASTS = ("none", "clahe")


def quiet(message: str) -> None:
    """An ``echo`` that prints nothing."""


class Executor(Protocol):
    """Runs the tiled stages of a job (default: in this process)."""

    def extract(self, reader: ImageReader, extractor: FeatureExtractor, store: Path,
                intensity_range: tuple[float, float], progress: Progress | None) -> None:
        """Write ``reader``'s feature store to ``store``, as ``extract_tiled`` does under ``intensity_range``."""

    def predict(self, prepared: PreparedImage, merger: ZarrMerger, options: PredictOptions, *,
                echo: Echo, progress: Progress | None) -> None:
        """Predict every tile of ``prepared.segmenter.tile`` not yet done into ``merger`` as ``options`` say
        (marking what it did, so a cut run resumes)."""


@dataclass(frozen=True)
class ModelOptions:
    """How a new model is trained: local contrast (``none`` or ``clahe``), the intensity rule, the classifier."""

    contrast: str = "none"
    normalize: str = DEFAULT_NORMALIZE
    classifier: ClassifierParams = field(default_factory=ClassifierParams)

    def __post_init__(self) -> None:
        if self.contrast not in CONTRASTS:
            raise DinosawError(f"contrast must be none or clahe, not {self.contrast!r}")
        check_normalize(self.normalize)
        convert(to_builtins(self.classifier), ClassifierParams, "classifier")  # its bounds, as a bundle's

    def segmenter(self, extractor: FeatureExtractor | None, run: RunOptions) -> Segmenter:
        """An untrained Segmenter with these options, on ``run``'s threads and device."""
        from dinosaw_deploy.segment.segmenter import Segmenter

        return Segmenter(extractor=extractor, classifier=self.classifier,
                         contrast=ClaheConfig() if self.contrast == "clahe" else None, normalize=self.normalize,
                         threads=run.threads, device=run.device)


@dataclass(frozen=True)
class PredictOptions:
    """What a prediction writes besides the labels (``probabilities``), how it labels pixels (``exact``:
    the most probable class of every pixel, instead of a coarse grid refined near class boundaries, see
    :mod:`~dinosaw_deploy.segment.refine`) and how it smooths them (``modal``: majority-filter radius in
    px, 0 = off; ``crf``: dense CRF per tile)."""

    probabilities: bool = False
    modal: int = 0
    crf: bool = False
    exact: bool = False

    def __post_init__(self) -> None:
        check_modal(self.modal)


@dataclass(frozen=True)
class RunOptions:
    """How a job runs: replace existing outputs, CPU threads (None: all cores) and training device, where
    progress lines (``echo``) and tile counts (``progress(done, total)``) go, where the tiled stages run
    (``executor``, e.g. ``dinosaw_deploy.cluster.DaskExecutor``), and the largest image accepted."""

    overwrite: bool = False
    threads: int | None = None
    device: str = "auto"
    echo: Echo = quiet
    progress: Progress | None = None
    executor: Executor | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
