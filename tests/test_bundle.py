"""The .dsw bundle: round trip, and clear errors for tampered, foreign or newer bundles."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.segment.bundle import FORMAT, FORMAT_VERSION, MANIFEST, Bundle, load_bundle, save_bundle
from dinosaw_deploy.segment.classifier import ClassifierParams
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    image, truth = synthetic_micrograph(160, 200, seed=2)
    seg = Segmenter(classifier=ClassifierParams(rounds=8), threads=2).fit(image, synthetic_scribbles(truth, seed=2))
    path = tmp_path_factory.mktemp("bundle") / "model.dsw"
    seg.save(path)
    return seg, path, image


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, edit(name, zin.read(name)))


def test_roundtrip_predicts_identically_and_holds_no_pickle(trained):
    seg, path, image = trained
    loaded = Segmenter.load(path)
    np.testing.assert_array_equal(loaded.predict(image), seg.predict(image))
    assert [c.to_dict() for c in loaded.label_classes] == [c.to_dict() for c in seg.label_classes]
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["arrays.npz", "classifier.json", "config.json", "manifest.json"]
        assert json.loads(archive.read("config.json"))["filter_bank"]["sigmas"] == [0, 1, 2, 4, 8, 16]


def test_bytes_roundtrip_is_the_file_without_a_file(trained, tmp_path):
    seg, path, image = trained
    data = seg.to_bytes()
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == zipfile.ZipFile(path).namelist()
    np.testing.assert_array_equal(Segmenter.from_bytes(data).predict(image), seg.predict(image))
    tampered = tmp_path / "t.dsw"
    path_copy = tmp_path / "c.dsw"
    path_copy.write_bytes(data)
    _rewrite(path_copy, tampered, lambda name, raw: raw + b" " if name == "config.json" else raw)
    with pytest.raises(DinosawError, match=r"^model bundle: config.json does not match its recorded sha256"):
        Segmenter.from_bytes(tampered.read_bytes())
    with pytest.raises(DinosawError, match="not a .dsw model bundle"):
        Segmenter.from_bytes(b"PK\x03\x04 junk")


def test_arrays_roundtrip(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    path = save_bundle(tmp_path / "b.dsw", Bundle({"x": 1}, arrays, b"model"))
    bundle = load_bundle(path)
    assert bundle.config == {"x": 1} and bundle.classifier == b"model"
    np.testing.assert_array_equal(bundle.arrays["a"], arrays["a"])


def test_tampered_member_is_refused(trained, tmp_path):
    _, path, _ = trained
    bad = tmp_path / "bad.dsw"
    _rewrite(path, bad, lambda n, d: d.replace(b'"max_depth": 8', b'"max_depth": 9') if n == "config.json" else d)
    with pytest.raises(DinosawError, match="tampered"):
        Segmenter.load(bad)


def test_newer_or_foreign_bundles_are_refused(trained, tmp_path):
    _, path, _ = trained

    def bump(name, data):
        if name != MANIFEST:
            return data
        record = json.loads(data)
        record["format_version"] = FORMAT_VERSION + 1
        return json.dumps(record).encode()

    newer = tmp_path / "newer.dsw"
    _rewrite(path, newer, bump)
    with pytest.raises(DinosawError, match="newer"):
        Segmenter.load(newer)
    junk = tmp_path / "junk.dsw"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DinosawError, match="not a .dsw"):
        Segmenter.load(junk)
    partial = tmp_path / "partial.dsw"
    with zipfile.ZipFile(partial, "w") as archive:
        archive.writestr(MANIFEST, json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION}))
    with pytest.raises(DinosawError, match=r"missing arrays.npz, classifier.json, config.json"):
        Segmenter.load(partial)
    with zipfile.ZipFile(partial, "w") as archive:
        archive.writestr(MANIFEST, "{}")
    with pytest.raises(DinosawError, match="not a dinosaw-deploy segmenter bundle"):
        Segmenter.load(partial)
    with pytest.raises(DinosawError, match="not found"):
        Segmenter.load(tmp_path / "absent.dsw")


def test_truncated_bundle_is_refused(trained, tmp_path):
    _, path, _ = trained
    cut = tmp_path / "cut.dsw"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DinosawError, match="dsw"):
        Segmenter.load(cut)


def as_format_1(src, dst):
    """``src`` rewritten as a format-1 bundle (the booster as XGBoost UBJSON in ``classifier.ubj``)."""
    import hashlib

    import xgboost

    with zipfile.ZipFile(src) as zin:
        data = {name: zin.read(name) for name in zin.namelist()}
    booster = xgboost.Booster()
    booster.load_model(bytearray(data.pop("classifier.json")))
    data["classifier.ubj"] = bytes(booster.save_raw("ubj"))
    data[MANIFEST] = json.dumps({"format": FORMAT, "format_version": 1, "sha256": {
        n: hashlib.sha256(d).hexdigest() for n, d in data.items() if n != MANIFEST}}).encode()
    with zipfile.ZipFile(dst, "w") as zout:
        for name, raw in data.items():
            zout.writestr(name, raw)
    return dst


def test_format_1_bundles_load_predict_the_same_and_resave_as_format_2(trained, tmp_path):
    seg, path, image = trained
    old = as_format_1(path, tmp_path / "old.dsw")
    loaded = Segmenter.load(old)
    np.testing.assert_array_equal(loaded.predict(image), seg.predict(image))
    loaded.save(tmp_path / "new.dsw")
    with zipfile.ZipFile(tmp_path / "new.dsw") as archive:
        assert "classifier.json" in archive.namelist() and "classifier.ubj" not in archive.namelist()
        assert json.loads(archive.read(MANIFEST))["format_version"] == FORMAT_VERSION == 2
        assert archive.read("classifier.json") == zipfile.ZipFile(path).read("classifier.json")
