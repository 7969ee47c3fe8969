"""Bare library latency of a stroke painted inside the view (no GUI): retrain, then the strided first look at the
view, on the 2048² EBC mosaic of interactive_latency.py with a 1151 x 963 px view. Needs ../shared.

    python benchmarks/stroke_in_view.py
"""
import sys
import time

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from interactive_latency import ebc_mosaic, strokes

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "tools"))
from scribbles import scribbles

from dinosaw_deploy.napari_plugin.session import LiveSession
from dinosaw_deploy.segment.labels import scribbles_from_array

image, truth = ebc_mosaic()
box = (449, 1600, 545, 1504)
first = scribbles(truth, seed=0, frac=0.003)
s = LiveSession(image, threads=2)
t = s.generations.new(); s.train(first, t); list(s.predict(box, t))
painted = first.copy(); times = []
for st in strokes(truth, 12, seed=1, box=box):
    painted = np.where(st > 0, st, painted)
    a = time.monotonic(); t = s.generations.new(); s.train(scribbles_from_array(painted), t); b = time.monotonic()
    list(s.predict(box, t, preview=True)); c = time.monotonic()
    times.append((b - a, c - a))
tr = np.array(times)
print("strokes in view:", len(tr), "train p50 %.2f s, first look p50 %.2f s" % tuple(np.median(tr, 0)))
