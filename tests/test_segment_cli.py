"""`segment` / `apply` end to end: outputs, pixel size, clear errors, kill + resume."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from dinosaw_deploy.cli import main
from dinosaw_deploy.segment.filters import FilterBank
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles

FEI = "[Scan]\nPixelWidth=2.5e-09\nPixelHeight=2.5e-09\n"
FAST = ["--no-vit", "--rounds", "5", "--threads", "2"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("segcli")
    image, truth = synthetic_micrograph(300, 700, seed=5)
    tifffile.imwrite(root / "scan.tif", image, extratags=[(34682, "s", 0, FEI, True)])  # FEI pixel size
    labels = synthetic_scribbles(truth, fraction=0.02, seed=5)
    (root / "scribbles.png").write_bytes(imagecodecs.png_encode(labels * 85))  # grey levels 85/170/255
    return root, image


def run(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def segmented(inputs):
    root, _ = inputs
    out = root / "ref" / "seg.ome.tif"
    out.parent.mkdir()
    code, text = run("segment", root / "scan.tif", "--labels", root / "scribbles.png", "-o", out,
                     "--save-model", out.parent / "seg.dsw", "--probabilities", "--modal", "1", *FAST)
    assert code == 0, text
    return out, text


def test_segment_writes_pyramidal_ome_with_pixel_size(inputs, segmented):
    root, image = inputs
    out, text = segmented
    assert "label value 170 -> class 2" in text
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome and tif.pages[0].is_tiled
        labels = tif.series[0].levels[0].asarray()
        assert [lv.shape for lv in tif.series[0].levels] == [(300, 700), (150, 350)]
        assert 'PhysicalSizeX="0.0025"' in tif.ome_metadata
    assert labels.shape == image.shape and set(np.unique(labels)) <= {1, 2, 3}
    model = Segmenter.load(out.parent / "seg.dsw")
    np.testing.assert_array_equal(model.predict(image, modal=1), labels)
    with tifffile.TiffFile(out.with_name("seg.probabilities.ome.tif")) as tif:
        probs = tif.series[0].asarray()
    assert probs.shape == (3, 300, 700) and probs.dtype == np.uint8
    assert out.with_name("seg.preview.png").is_file()
    assert not out.with_name("seg.ome.tif.work").exists()


_OPENED: list[str] = []


def _record_opens(event: str, args: tuple) -> None:
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


def test_apply_reproduces_segment_and_reads_the_model_once(inputs, segmented):
    root, _ = inputs
    out, _ = segmented
    applied = root / "applied.ome.tif"
    model = out.parent / "seg.dsw"
    _OPENED.clear()
    sys.addaudithook(_record_opens)  # hooks cannot be removed; this one only appends to _OPENED
    code, text = run("apply", root / "scan.tif", "--model", model, "-o", applied, "--modal", "1")
    opened = [p for p in _OPENED if Path(p).name == model.name]
    _OPENED.clear()
    assert code == 0, text
    np.testing.assert_array_equal(tifffile.imread(applied), tifffile.imread(out))
    assert len(opened) == 1, opened


@pytest.mark.parametrize(
    "case, message",
    [
        ("mismatch", "labels are 300x699 px but the image is 300x700 px"),
        ("exists", "exists; pass --overwrite"),
        ("suffix", "must end in .ome.tif"),
        ("both", "contradict"),
        ("tampered", "tampered"),
    ],
)
def test_mistakes_give_one_error_line(inputs, segmented, tmp_path, case, message):
    root, image = inputs
    out, _ = segmented
    scan, scribbles = root / "scan.tif", root / "scribbles.png"
    target = tmp_path / "x.ome.tif"
    if case == "mismatch":
        bad = tmp_path / "bad.png"
        bad.write_bytes(imagecodecs.png_encode(np.pad(np.array([[85, 170]], np.uint8), ((0, 299), (0, 697)))))
        args = ["segment", scan, "--labels", bad, "-o", target, *FAST]
    elif case == "exists":
        args = ["segment", scan, "--labels", scribbles, "-o", out, *FAST]
    elif case == "suffix":
        args = ["segment", scan, "--labels", scribbles, "-o", tmp_path / "x.png", *FAST]
    elif case == "both":
        args = ["segment", scan, "--labels", scribbles, "-o", target, "--engine", "e.onnx", "--no-vit"]
    else:
        import zipfile

        bad = tmp_path / "bad.dsw"
        with zipfile.ZipFile(out.parent / "seg.dsw") as zin, zipfile.ZipFile(bad, "w") as zout:
            for name in zin.namelist():
                data = zin.read(name)
                zout.writestr(name, data.replace(b'"rounds": 5', b'"rounds": 6') if name == "config.json" else data)
        args = ["apply", scan, "--model", bad, "-o", target]
    code, text = run(*args)
    assert code == 1
    assert text.strip().splitlines()[-1].startswith("Error:") and message in text and "Traceback" not in text
    assert not target.exists()


def test_killed_run_resumes_to_the_same_output(inputs, segmented, tmp_path, monkeypatch):
    root, _ = inputs
    out, _ = segmented
    target = tmp_path / "seg.ome.tif"
    args = ["segment", root / "scan.tif", "--labels", root / "scribbles.png", "-o", target, "--modal", "1", *FAST]
    original, calls = Segmenter.predict_box, []

    def dying(self, *a, **k):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(Segmenter, "predict_box", dying)
    code, _ = run(*args[:-2], "--threads", "1")
    assert code == 130 and not target.exists()
    work = tmp_path / "seg.ome.tif.work"
    assert (work / "model.dsw").is_file() and len(list((work / "done").iterdir())) == 1
    monkeypatch.setattr(Segmenter, "predict_box", original)
    code, text = run(*args[:-2], "--threads", "1")
    assert code == 0 and "resuming" in text and "1 of 2 tiles already predicted" in text
    np.testing.assert_array_equal(tifffile.imread(target), tifffile.imread(out))
    assert not work.exists()


def test_segment_and_apply_with_vit_engine(inputs, tiny_engine, tmp_path):
    root, _ = inputs
    out, model = tmp_path / "vit.ome.tif", tmp_path / "vit.dsw"
    code, text = run("segment", root / "scan.tif", "--labels", root / "scribbles.png", "-o", out, "--engine",
                     tiny_engine, "--save-model", model, "--rounds", "5", "--threads", "2")
    assert code == 0, text
    assert f"({FilterBank().num_channels + 9} features)" in text and not out.with_name("vit.ome.tif.work").exists()
    code, text = run("apply", root / "scan.tif", "--model", model, "-o", tmp_path / "a.ome.tif")
    assert code == 1 and "pass --engine" in text
    code, text = run("apply", root / "scan.tif", "--model", model, "-o", tmp_path / "a.ome.tif", "--engine",
                     tiny_engine.with_name("tiny.fp16.onnx"))
    assert code == 0, text
    same = (tifffile.imread(tmp_path / "a.ome.tif") == tifffile.imread(out)).mean()
    assert same > 0.99  # fp16 features: a few pixels near a decision boundary may flip


def test_segment_does_not_import_scikit_learn(inputs, tmp_path):
    """xgboost would import scikit-learn (0.7 s of process start) for wrappers `segment` never uses."""
    root, _ = inputs
    out = tmp_path / "seg.ome.tif"
    script = ("import sys; from dinosaw_deploy.cli import main\n"
              "try:\n    main(sys.argv[1:])\n"
              "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
              "print('sklearn' in sys.modules, 'xgboost' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script, "segment", str(root / "scan.tif"), "--labels",
                           str(root / "scribbles.png"), "-o", str(out), *FAST], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == ["False", "True"]
    assert tifffile.imread(out).shape == (300, 700)
