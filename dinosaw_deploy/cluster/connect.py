"""``--cluster SPEC``: where the blocks run, as a ``distributed.Client``.

* ``local`` / ``local:N`` — start a ``distributed.LocalCluster`` here: N worker processes (default:
  one per core), one thread each, bound to 127.0.0.1, closed when the job ends;
* ``tcp://HOST:PORT`` — connect to a running scheduler (``dask scheduler`` + ``dask worker``s);
* ``slurm:CONFIG.yaml`` — submit workers as SLURM jobs through ``dask-jobqueue``
  (``SLURMCluster(**config["cluster"])`` scaled to ``config["jobs"]``; see docs/cluster.md).

dask is imported only here, and only when a job asks for a cluster.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from dinosaw_deploy.errors import DinosawError

CONNECT_TIMEOUT_S = 5.0  # an absent tcp:// scheduler fails within this many seconds


def _distributed():
    try:
        import distributed
    except ImportError:
        raise DinosawError("--cluster needs dask.distributed: pip install 'dinosaw-deploy[cluster]'") from None
    return distributed


def parse_spec(spec: str) -> tuple[str, Any]:
    """``(kind, argument)`` of a cluster spec: ("local", N|None), ("address", str), ("slurm", Path)."""
    if spec == "local" or spec.startswith("local:"):
        count = spec.partition(":")[2]
        if count and not (count.isdigit() and int(count) >= 1):
            raise DinosawError(f"--cluster local:N needs a worker count N >= 1, got {spec!r}")
        return "local", int(count) if count else None
    if spec.startswith(("tcp://", "tls://", "ucx://", "inproc://")):
        return "address", spec
    if spec.startswith("slurm:"):
        return "slurm", Path(spec[len("slurm:"):])
    raise DinosawError(f"--cluster must be local[:N], tcp://HOST:PORT or slurm:CONFIG.yaml, not {spec!r}")


def _slurm(config_path: Path):
    import yaml

    if not config_path.is_file():
        raise DinosawError(f"cluster config not found: {config_path}")
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise DinosawError("--cluster slurm:... needs dask-jobqueue: pip install dask-jobqueue") from None
    config = yaml.safe_load(config_path.read_text()) or {}
    if not isinstance(config.get("cluster"), dict) or not isinstance(config.get("jobs", 1), int):
        raise DinosawError(f"{config_path}: expected a 'cluster:' mapping (SLURMCluster arguments) and 'jobs: N'")
    cluster = SLURMCluster(**config["cluster"])
    cluster.scale(jobs=config.get("jobs", 1))
    return cluster


@contextmanager
def connect(spec: str, timeout: float = CONNECT_TIMEOUT_S) -> Iterator[Any]:
    """A ``distributed.Client`` for ``spec`` (closed, with any cluster it started, on exit); a ``tcp://``
    scheduler that does not answer within ``timeout`` seconds is one clear error.

    >>> with connect("local:2") as client:
    ...     segment_scan(..., run=RunOptions(executor=DaskExecutor(client)))
    """
    kind, arg = parse_spec(spec)
    if not timeout > 0:
        raise DinosawError(f"the connect timeout must be > 0 s, got {timeout}")
    distributed = _distributed()
    with ExitStack() as stack:
        if kind == "local":
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=arg or os.cpu_count() or 1, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address="127.0.0.1:0"))
            client = stack.enter_context(distributed.Client(cluster))
        elif kind == "slurm":
            cluster = stack.enter_context(_slurm(arg))
            client = stack.enter_context(distributed.Client(cluster))
        else:
            try:
                client = stack.enter_context(distributed.Client(arg, timeout=timeout))
            except OSError as exc:  # TimeoutError included
                raise DinosawError(f"cannot reach the dask scheduler at {arg} within {timeout:g} s "
                                   f"({type(exc).__name__}); is it running? (connect timeout: --connect-timeout)"
                                   ) from None
        yield client
