"""Features, segment and apply on dask.distributed (``--cluster``): blocks that are pure functions
of (image region, fitted state), written chunk-aligned by the workers, resumable, same numbers as
one process. Layer 5: imports segment, tiling, engine, image; dask only when a cluster is used.

>>> from dinosaw_deploy.cluster import DaskExecutor, connect
>>> with connect("local:2") as client:
...     segment_scan("scan.tif", "scribbles.png", "seg.ome.zarr", run=RunOptions(executor=DaskExecutor(client)))
"""
from dinosaw_deploy.cluster.connect import connect, parse_spec
from dinosaw_deploy.cluster.executor import DaskExecutor, DaskTiles, cluster_executor

__all__ = ["DaskExecutor", "DaskTiles", "cluster_executor", "connect", "parse_spec"]
