"""Post-processing of predicted labels: majority (modal) filter and dense CRF, both tile-exact with a halo."""
from __future__ import annotations

import numpy as np

from dinosaw_deploy.errors import DinosawError

CRF_HALO = 64
MAX_MODAL = 256  # px: the halo every tile reads grows with the radius


def check_modal(radius: object) -> int:
    """The modal-filter radius as an int in 0..MAX_MODAL (0 = off), else a DinosawError."""
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or not 0 <= radius <= MAX_MODAL:
        raise DinosawError(f"modal must be an integer radius in 0..{MAX_MODAL} px (0 = off), got {radius!r}")
    return int(radius)


def modal_filter(labels: np.ndarray, radius: int, num_classes: int) -> np.ndarray:
    """Majority label in a (2r+1)² window (ties go to the lower class); borders mirrored."""
    from scipy import ndimage

    counts = np.stack([ndimage.uniform_filter((labels == k).astype(np.float32), 2 * radius + 1, mode="reflect")
                       for k in range(1, num_classes + 1)])
    return (counts.argmax(axis=0) + 1).astype(np.uint8)


def dense_crf(probs: np.ndarray, gray: np.ndarray, iterations: int = 10) -> np.ndarray:
    """Dense-CRF labels (1..K) from class probabilities (K, h, w) and the gray image (h, w) in [0, 1]
    (ISB's settings: Gaussian sxy 3 / compat 10, bilateral sxy 80 / srgb 13 / compat 10)."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise DinosawError("--crf needs the optional CRF extra: pip install 'dinosaw-deploy[crf]'") from None
    k, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1.0)).reshape(k, -1), np.float32))
    crf.addPairwiseGaussian(sxy=3, compat=10)
    rgb = np.ascontiguousarray(np.repeat((np.clip(gray, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1))
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=rgb, compat=10)
    q = np.asarray(crf.inference(iterations)).reshape(k, h, w)
    return (q.argmax(axis=0) + 1).astype(np.uint8)
