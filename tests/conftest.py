"""Shared fixtures: the golden reference sets and a tiny exported engine."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"
TINY = DATA / "alibi_dv2_tiny"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEPTH2 = SHARED / "golden" / "alibi_dv2_depth2"
ISB = SHARED / "data" / "isb"


def golden_cases(root: Path) -> dict[str, dict[str, np.ndarray]]:
    """{case: {field: array}} from a golden ``cases.npz``."""
    cases: dict[str, dict[str, np.ndarray]] = {}
    with np.load(root / "cases.npz") as npz:
        for key in npz.files:
            case, field = key.split("__", 1)
            cases.setdefault(case, {})[field] = npz[key]
    return cases


def golden_sets() -> list:
    """The tiny set (always, from tests/data) and depth-2 (from ../shared, skipped when absent)."""
    return [
        pytest.param(TINY, id="tiny"),
        pytest.param(
            DEPTH2,
            id="depth2",
            marks=[pytest.mark.shared, pytest.mark.skipif(not DEPTH2.is_dir(), reason="../shared absent")],
        ),
    ]


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory) -> Path:
    """The tiny golden model exported (fp32 + fp16) once per test session."""
    pytest.importorskip("torch")
    from dinosaw_deploy.export.build import run_export

    out = tmp_path_factory.mktemp("engines")
    run_export(TINY / "weights_timm.pth", out_dir=out, name="tiny", fp16=True, config_path=TINY / "config.json")
    return out / "tiny.onnx"


@contextlib.contextmanager
def locked_elsewhere(*paths):
    """Hold ``files.output_lock`` on ``paths`` from another thread (the owning thread may nest)."""
    from dinosaw_deploy.files import output_lock

    taken, release = threading.Event(), threading.Event()

    def hold():
        with output_lock(paths):
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert taken.wait(10)
    try:
        yield
    finally:
        release.set()
        holder.join(10)
