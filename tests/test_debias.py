"""Bias jitter, positional-subspace removal and the engine comparison, on small random engines: what random weights
can show (a smooth learned positional embedding is read by the probe; ALiBi's features are not; removing the fitted
subspace takes the probe's R² down)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dinosaw_deploy.cli import main
from dinosaw_deploy.engine.debias import PositionalSubspace
from dinosaw_deploy.engine.extractor import FeatureExtractor
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.probe.debias import fit_subspace
from dinosaw_deploy.probe.positional import probe_features
from dinosaw_deploy.segment.segmenter import Segmenter
from dinosaw_deploy.synthetic import synthetic_micrograph, synthetic_scribbles

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """A small DINOv2 (smooth sinusoidal PE, timm-like init) and the same weights as ALiBi-Dv2 and NoPE."""
    from dinosaw_deploy.export.build import run_export
    from dinosaw_deploy.export.model import ViT, ViTConfig

    folder = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    model = ViT(ViTConfig(embed_dim=64, depth=2, num_heads=2, family="dinov2", pos_embed_grid=(16, 16)))
    torch.save(model.state_dict(), folder / "dinov2.pth")
    torch.save({k: v for k, v in model.state_dict().items() if k != "pos_embed"}, folder / "alibi.pth")
    out = {}
    for name, checkpoint, family in (("dinov2", "dinov2.pth", None), ("alibi", "alibi.pth", None),
                                     ("nope", "alibi.pth", "nope")):
        out[name] = run_export(folder / checkpoint, out_dir=folder, family=family).artifacts[0]
    return out


def _images(n: int, size: int = 672):
    return [synthetic_micrograph(size, size, seed=s)[0] for s in range(n)]


def test_a_smooth_learned_pe_is_read_by_the_probe_and_removed_by_debias(engines, tmp_path):
    dinov2 = FeatureExtractor(engines["dinov2"], backend="cpu")
    alibi = FeatureExtractor(engines["alibi"], backend="cpu")
    train, test = _images(4), [synthetic_micrograph(672, 672, seed=10)[0]]
    rng = np.random.default_rng(0)
    raw = probe_features(dinov2(test[0]), rng=rng).xy.mean()
    assert raw > 0.5, raw
    assert probe_features(alibi(test[0]), rng=rng).xy.mean() < 0.2
    subspace = fit_subspace([dinov2(image) for image in train], max_rank=32)
    report = subspace.report
    assert report["r2_xy_before"] > 0.5 and report["reached_target"] and report["r2_xy_after"] < 0.02
    assert 1 <= subspace.rank <= 32
    debiased = FeatureExtractor(engines["dinov2"], backend="cpu", debias=subspace)(test[0])
    assert probe_features(debiased, rng=np.random.default_rng(0)).xy.mean() < raw - 0.4
    # the removed directions are gone (constant at the mean's coordinates), all others untouched
    coords = np.moveaxis(debiased, 0, -1) @ subspace.basis
    assert np.allclose(coords, subspace.mean @ subspace.basis, atol=1e-3)
    original = dinov2(test[0])
    orthogonal = np.eye(64) - subspace.basis @ subspace.basis.T
    assert np.allclose(np.moveaxis(debiased, 0, -1) @ orthogonal, np.moveaxis(original, 0, -1) @ orthogonal, atol=1e-4)
    path = subspace.save(tmp_path / "p.npz")
    again = PositionalSubspace.load(path)
    assert again.sha256 == subspace.sha256 and again.report["rank"] == subspace.rank


@pytest.mark.parametrize("content, message", [
    (b"not a zip", "unreadable"),
    ("wrong keys", "not a positional subspace"),
    ("not orthonormal", "orthonormal"),
    ("nan", "finite"),
])
def test_a_bad_subspace_file_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "p.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        mean, basis = np.zeros(8, np.float32), np.eye(8, 2, dtype=np.float32)
        report = np.frombuffer(b"{}", np.uint8)
        arrays = {"wrong keys": dict(mean=mean, basis=basis),
                  "not orthonormal": dict(mean=mean, basis=2 * basis, report=report),
                  "nan": dict(mean=np.full(8, np.nan, np.float32), basis=basis, report=report)}[content]
        np.savez(path, **arrays)
    with pytest.raises(DinosawError, match=message):
        PositionalSubspace.load(path)


def test_a_subspace_for_other_features_is_refused(engines):
    subspace = PositionalSubspace(np.zeros(32, np.float32), np.eye(32, 1, dtype=np.float32))
    with pytest.raises(DinosawError, match="32-channel"):
        FeatureExtractor(engines["alibi"], backend="cpu", debias=subspace)


def test_bias_jitter_is_seeded_symmetric_and_only_for_alibi(engines, tiny_engine):
    plain = FeatureExtractor(tiny_engine, backend="cpu")
    jittered = FeatureExtractor(tiny_engine, backend="cpu", bias_jitter=0.05)
    a, b = jittered.bias(4, 5), plain.bias(4, 5)
    assert a.shape == b.shape and not np.array_equal(a, b)
    noise = (a - b)[0, 0]
    assert np.allclose(noise, noise.T) and not noise[:5].any() and not noise[:, :5].any()
    assert 0.03 < noise[5:, 5:].std() < 0.07
    assert np.array_equal(FeatureExtractor(tiny_engine, backend="cpu", bias_jitter=0.05).bias(4, 5), a)
    assert not np.array_equal(FeatureExtractor(tiny_engine, backend="cpu", bias_jitter=0.05,
                                               jitter_seed=1).bias(4, 5), a)
    flat = np.full((112, 112), 128, np.uint8)
    spread_plain, spread_jitter = plain(flat).std(axis=(1, 2)).max(), jittered(flat).std(axis=(1, 2)).max()
    assert spread_plain < 1e-4 < spread_jitter  # wrapped ALiBi on a flat image: every token alike, until jittered
    with pytest.raises(DinosawError, match="has none"):
        FeatureExtractor(engines["nope"], backend="cpu", bias_jitter=0.05)
    with pytest.raises(DinosawError, match="bias_jitter"):
        FeatureExtractor(engines["alibi"], backend="cpu", bias_jitter=2.0)


def test_a_model_keeps_the_feature_settings_it_was_trained_with(engines, tmp_path):
    image, truth = synthetic_micrograph(168, 196, seed=3)
    scribbles = synthetic_scribbles(truth, seed=0)
    train = FeatureExtractor(engines["dinov2"], backend="cpu")
    subspace = fit_subspace([train(img) for img in _images(3)], max_rank=16)
    segmenter = Segmenter(extractor=train.configured(debias=subspace)).fit(image, scribbles)
    expected = segmenter.predict(image)
    segmenter.save(tmp_path / "m.dsw")
    loaded = Segmenter.load(tmp_path / "m.dsw", FeatureExtractor(engines["dinov2"], backend="cpu"))
    assert loaded.extractor.debias is not None and loaded.extractor.debias.sha256 == subspace.sha256
    assert np.array_equal(loaded.predict(image), expected)
    other = PositionalSubspace(subspace.mean, subspace.basis[:, :1])
    with pytest.raises(DinosawError, match="other feature settings"):
        Segmenter.load(tmp_path / "m.dsw", FeatureExtractor(engines["dinov2"], backend="cpu", debias=other))
    plain = Segmenter(extractor=train).fit(image, scribbles)
    plain.save(tmp_path / "plain.dsw")
    with pytest.raises(DinosawError, match="other feature settings"):
        Segmenter.load(tmp_path / "plain.dsw", FeatureExtractor(engines["dinov2"], backend="cpu", debias=subspace))


def test_cli_debias_fit_and_probe_compare(engines, tmp_path):
    pytest.importorskip("matplotlib")
    paths = []
    for seed, image in enumerate(_images(3)):
        paths.append(tmp_path / f"scan{seed}.png")
        Image.fromarray(image).save(paths[-1])
    truth = synthetic_micrograph(672, 672, seed=0)[1]
    Image.fromarray(synthetic_scribbles(truth, seed=0)).save(tmp_path / "scribbles.png")
    runner = CliRunner()
    fit = runner.invoke(main, ["debias", "fit", *map(str, paths), "--engine", str(engines["dinov2"]),
                               "-o", str(tmp_path / "d.npz"), "--backend", "cpu"])
    assert fit.exit_code == 0, fit.output
    assert "positional subspace of rank" in fit.output and (tmp_path / "d.npz").is_file()
    again = runner.invoke(main, ["debias", "fit", str(paths[0]), "--engine", str(engines["dinov2"]),
                                 "-o", str(tmp_path / "d.npz")])
    assert again.exit_code != 0 and again.output.startswith("Error:") and "exists" in again.output
    report = tmp_path / "compare.json"
    compare = runner.invoke(main, ["probe", "--compare", str(engines["alibi"]), str(engines["dinov2"]),
                                   f"{engines['dinov2']}+{tmp_path / 'd.npz'}", *map(str, paths), "--labels",
                                   str(tmp_path / "scribbles.png"), "--repeats", "2", "-o", str(report),
                                   "--backend", "cpu"])
    assert compare.exit_code == 0, compare.output
    rows = json.loads(report.read_text())["engines"]
    assert [r["family"] for r in rows] == ["alibi-dv2", "dinov2", "dinov2"]
    assert rows[2]["feature_settings"]["debias"]["rank"] >= 1
    r2 = [r["r2_xy"]["mean"] for r in rows]
    assert r2[1] > 0.5 and r2[2] < r2[1] - 0.3 and r2[0] < 0.2, r2
    assert len(rows[0]["channels"]["r2_xy"]) == 64
    figure = Image.open(report.with_suffix(".png"))
    assert figure.size[0] > 1000 and figure.size[1] > 600
    bad = runner.invoke(main, ["probe", "--compare", *map(str, paths), "-o", str(tmp_path / "x.json")])
    assert bad.exit_code != 0 and bad.output.startswith("Error:")


def test_debias_fit_reads_feature_files_without_an_engine(engines, tmp_path):
    from dinosaw_deploy.probe.debias import fit_debias

    dinov2 = FeatureExtractor(engines["dinov2"], backend="cpu")
    paths = []
    for i, image in enumerate(_images(2)):
        paths.append(tmp_path / f"f{i}.npy")
        np.save(paths[-1], dinov2(image))
    subspace = fit_debias(paths, tmp_path / "d.npz", max_rank=16)
    assert subspace.rank >= 1 and subspace.report["source"]["inputs"] == [str(p) for p in paths]
    assert PositionalSubspace.load(tmp_path / "d.npz").sha256 == subspace.sha256
    with pytest.raises(DinosawError, match="debiased"):
        fit_debias(paths, tmp_path / "e.npz", extractor=dinov2.configured(debias=subspace))
