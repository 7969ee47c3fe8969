"""The in-memory front door: arrays go through the same tiled core as files, and never touch the disk."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import tifffile

from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.image.reader import open_image
from dinosaw_deploy.synthetic import synthetic_micrograph
from dinosaw_deploy.tiling.pipeline import extract_tiled, patch_features
from dinosaw_deploy.tiling.store import FeatureStore


def test_array_features_equal_the_file_pipeline_bit_for_bit(tiny_engine, tmp_path):
    """Same tiles, intensity rule and merge: the in-memory sink gives the zarr store's numbers exactly."""
    fx = FeatureExtractor(tiny_engine)
    for image in (synthetic_micrograph(700, 900, seed=3)[0],  # uint8, 2 x 2 tiles with overlap
                  np.random.default_rng(0).normal(size=(600, 560, 3)).astype(np.float32)):  # float RGB
        path = tmp_path / f"img{image.ndim}.tif"
        tifffile.imwrite(path, image, photometric="rgb" if image.ndim == 3 else None)
        with open_image(path) as reader:
            extract_tiled(reader, fx, tmp_path / f"f{image.ndim}.zarr", dtype="float32")
        store = FeatureStore.open(tmp_path / f"f{image.ndim}.zarr")
        on_disk = store.read(0, 0, *store.shape[1:])
        in_memory = patch_features(image, fx)
        assert in_memory.dtype == np.float32 and in_memory.shape == on_disk.shape
        assert np.array_equal(in_memory, on_disk)


def test_fit_and_predict_on_arrays_open_no_file_for_writing(tiny_engine, tmp_path):
    """An audit hook sees every open() and mkdir: fit + predict of a ViT segmenter on arrays write nothing."""
    script = textwrap.dedent(f"""
        import sys, numpy as np
        from dinosaw_deploy import FeatureExtractor, Segmenter
        from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles
        import xgboost, zarr, tifffile, scipy.ndimage  # imported before the hook: their own caches are not ours
        image, truth = synthetic_micrograph(300, 420, seed=2)
        labels = synthetic_scribbles(truth, fraction=0.02, seed=2)
        fx = FeatureExtractor({str(tiny_engine)!r})
        writes = []
        def hook(event, args):
            if event == "open" and isinstance(args[0], (str, bytes)) and args[1] and any(c in str(args[1]) for c in "wax+"):
                writes.append(("open", args[0], args[1]))
            elif event in ("os.mkdir", "os.rename", "os.replace", "os.remove", "shutil.rmtree"):
                writes.append((event, args[0]))
        sys.addaudithook(hook)
        seg = Segmenter(extractor=fx).fit(image, labels)
        out = seg.predict(image)
        probs = seg.predict_proba(image)
        assert out.shape == image.shape[:2] and probs.shape[1:] == image.shape[:2]
        print("WRITES", writes)
        sys.exit(1 if writes else 0)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
