"""dinosaw-deploy: ALiBi-Dv2 features and scribble segmentation for large micrographs.

The runtime never imports torch; the build side lives in :mod:`dinosaw_deploy.export`.
Layers, bottom to top: ``image`` -> ``engine`` -> ``tiling`` -> ``segment`` / ``probe`` -> ``live`` / ``cluster``
-> ``cli`` (``tests/test_layers.py`` keeps imports running one way).

>>> from dinosaw_deploy import FeatureExtractor, Segmenter
>>> fx = FeatureExtractor("engines/alibi_dv2_vits14.onnx")
>>> labels = Segmenter(extractor=fx).fit(image, scribbles).predict(image)
"""
from __future__ import annotations

from importlib import import_module

from dinosaw_deploy._version import __version__
from dinosaw_deploy.engine.bias import BiasConfig, attention_bias
from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.errors import DinosawError

# Heavier names load on first use, so ``import dinosaw_deploy`` stays light.
_LAZY = {
    "Segmenter": "dinosaw_deploy.segment.segmenter",
    "segment_scan": "dinosaw_deploy.segment.run",
    "apply_scan": "dinosaw_deploy.segment.run",
    "fit_scans": "dinosaw_deploy.segment.run",
    "apply_scans": "dinosaw_deploy.segment.run",
    "ModelOptions": "dinosaw_deploy.segment.options",
    "PredictOptions": "dinosaw_deploy.segment.options",
    "RunOptions": "dinosaw_deploy.segment.options",
    "load_scribbles": "dinosaw_deploy.segment.labels",
    "open_image": "dinosaw_deploy.image.reader",
    "extract_tiled": "dinosaw_deploy.tiling.pipeline",
    "patch_features": "dinosaw_deploy.tiling.pipeline",
    "FeatureStore": "dinosaw_deploy.tiling.store",
}

__all__ = ["BiasConfig", "DinosawError", "FeatureExtractor", "__version__", "attention_bias", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
