"""dinosaw-deploy: ALiBi-Dv2 features and scribble segmentation for large micrographs.

The runtime never imports torch; the build side lives in :mod:`dinosaw_deploy.export`.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .bias import BiasConfig, attention_bias
from .errors import DinosawError
from .extractor import FeatureExtractor

__all__ = ["BiasConfig", "DinosawError", "FeatureExtractor", "__version__", "attention_bias"]
