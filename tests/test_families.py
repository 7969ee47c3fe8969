"""Every model family through one engine contract, against references no one here wrote: timm's DINOv2-reg4 and
LocAtViT's own code (outputs in tests/data/zoo, written by tests/data/zoo/make_goldens.py)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from dinosaw_deploy.cli import main  # noqa: E402
from dinosaw_deploy.engine.bias import BiasConfig, attention_bias  # noqa: E402
from dinosaw_deploy.engine.extractor import FeatureExtractor  # noqa: E402
from dinosaw_deploy.errors import DinosawError  # noqa: E402
from dinosaw_deploy.export.build import run_export  # noqa: E402
from dinosaw_deploy.export.checkpoint import load_checkpoint  # noqa: E402
from dinosaw_deploy.export.model import ViT, ViTConfig  # noqa: E402
from dinosaw_deploy.export.pos_embed import resize_pos_embed  # noqa: E402

from .conftest import DATA, TINY  # noqa: E402

ZOO = DATA / "zoo"
sys.path.insert(0, str(ZOO))
from zoo_weights import DINOV2_SIZES, LOCAT_SIZES, pixel_values, timm_dinov2_state  # noqa: E402


@pytest.mark.parametrize("grid", [(37, 37), (26, 37), (4, 5), (50, 61), (1, 1), (1, 80), (200, 3)])
def test_pos_embed_resize_is_torchs_antialiased_bicubic(grid):
    table = torch.randn(1, 37 * 37, 16)
    square = table.reshape(1, 37, 37, 16).permute(0, 3, 1, 2)
    expected = F.interpolate(square, size=grid, mode="bicubic", antialias=True, align_corners=False)
    got = resize_pos_embed(table, (37, 37), *grid)
    assert torch.allclose(got, expected.permute(0, 2, 3, 1).reshape(1, -1, 16), atol=1e-5)


@pytest.fixture(scope="module")
def dinov2_engine(tmp_path_factory):
    """timm's vit_small_patch14_reg4_dinov2 weights (drawn as the golden writer drew them), exported."""
    golden = np.load(ZOO / "dinov2_reg4_golden.npz")
    shapes = {k: tuple(v.shape) for k, v in ViT(ViTConfig(family="dinov2", pos_embed_grid=(37, 37))).state_dict().items()}
    assert sorted(shapes) == list(golden["keys"]), "our DINOv2 keys must be timm's"
    folder = tmp_path_factory.mktemp("dinov2")
    torch.save({k: torch.from_numpy(v) for k, v in timm_dinov2_state(shapes).items()}, folder / "timm.pth")
    result = run_export(folder / "timm.pth", out_dir=folder, fp16=True, int8=True)  # each verified (CRITERIA)
    assert [p.name for p in result.artifacts] == ["dinov2_vits14.onnx", "dinov2_vits14.fp16.onnx", "dinov2_vits14.int8.onnx"]
    return result.artifacts[0], golden


@pytest.mark.parametrize("size, tolerance", [(DINOV2_SIZES[0], 1e-4), (DINOV2_SIZES[1], 1e-3)])
def test_dinov2_engine_matches_timm_forward_features(dinov2_engine, size, tolerance):
    engine, golden = dinov2_engine
    assert engine.name == "dinov2_vits14.onnx"
    extractor = FeatureExtractor(engine, backend="cpu")
    assert extractor.bias_config.kind == "none" and extractor.manifest["family"] == "dinov2"
    h, w = size
    features = extractor.run(pixel_values(h, w))[0]
    key = f"{h}x{w}"
    assert features.shape == (384, h // 14, w // 14)
    assert np.abs(features[::4] - golden[f"channels_{key}"]).max() <= tolerance
    assert np.abs(features.mean(axis=(1, 2)) - golden[f"mean_{key}"]).max() <= tolerance
    assert np.abs(features.std(axis=(1, 2)) - golden[f"std_{key}"]).max() <= tolerance


def test_meta_layout_loads_as_timms(tmp_path):
    """Meta's DINOv2 names (register_tokens, a class-token row in pos_embed, mask_token) give timm's model."""
    config = ViTConfig(embed_dim=64, depth=2, num_heads=2, family="dinov2", pos_embed_grid=(6, 6))
    timm_state = {k: torch.from_numpy(v) for k, v in timm_dinov2_state(
        {k: tuple(v.shape) for k, v in ViT(config).state_dict().items()}).items()}
    cls_row = torch.randn(1, 1, 64)
    meta = {k: v for k, v in timm_state.items() if k not in ("reg_token", "pos_embed", "cls_token")}
    meta.update(register_tokens=timm_state["reg_token"], mask_token=torch.zeros(1, 64),
                cls_token=timm_state["cls_token"] - cls_row, pos_embed=torch.cat([cls_row, timm_state["pos_embed"]], 1))
    torch.save(timm_state, tmp_path / "timm.pth")
    torch.save(meta, tmp_path / "meta.pth")
    pixels = torch.from_numpy(pixel_values(70, 98))
    bias = torch.zeros(1, 1, 5 + 35, 5 + 35)
    with torch.no_grad():
        a, b = (load_checkpoint(tmp_path / name).model(pixels, bias) for name in ("timm.pth", "meta.pth"))
    assert load_checkpoint(tmp_path / "meta.pth").model.config.family == "dinov2"
    assert torch.allclose(a, b, atol=1e-5)


def test_locat_engine_matches_the_reference_implementation(tmp_path):
    result = run_export(ZOO / "locat_weights.pth", out_dir=tmp_path, fp16=True)
    assert [p.name for p in result.artifacts] == ["locat_vits14.onnx", "locat_vits14.fp16.onnx"]
    golden = np.load(ZOO / "locat_golden.npz")
    extractor = FeatureExtractor(result.artifacts[0], backend="cpu")
    arch = extractor.manifest["architecture"]
    assert (arch["family"], arch["locat_grid"], arch["prr"]) == ("locat", [8, 8], True)
    for h, w in LOCAT_SIZES:  # the training grid, and one where the kernel's variance is rescaled
        features = extractor.run(pixel_values(h, w))[0]
        assert np.abs(features - golden[f"features_{h}x{w}"]).max() <= 1e-4
    # the kernel matters: without it the same weights give other features
    state = torch.load(ZOO / "locat_weights.pth")
    model = load_checkpoint(ZOO / "locat_weights.pth").model
    for block in model.blocks:
        block.attn.gaug = None
    with torch.no_grad():
        plain = model(torch.from_numpy(pixel_values(112, 112)), torch.zeros(1, 1, 69, 69))[0].numpy()
    assert np.abs(plain - golden["features_112x112"]).max() > 5e-3
    assert any(k.endswith("gaug.log_var.weight") for k in state)


def test_nope_is_alibi_dv2_without_its_bias(tmp_path):
    engines = {}
    for family in ("alibi-dv2", "nope"):
        engines[family] = run_export(TINY / "weights_timm.pth", out_dir=tmp_path, family=family,
                                     config_path=TINY / "config.json").artifacts[0]
    assert [p.name for p in engines.values()] == ["alibi_dv2_vits14.onnx", "nope_vits14.onnx"]
    nope = FeatureExtractor(engines["nope"], backend="cpu")
    assert not nope.bias(3, 4).any() and nope.bias(3, 4).shape == (1, 1, 5 + 12, 5 + 12)
    pixels = pixel_values(56, 84)
    alibi = FeatureExtractor(engines["alibi-dv2"], backend="cpu").run(pixels)
    model = load_checkpoint(TINY / "weights_timm.pth", config_path=TINY / "config.json").model
    with torch.no_grad():
        unbiased = model(torch.from_numpy(pixels), None).numpy()
    assert np.abs(nope.run(pixels) - unbiased).max() <= 1e-4
    assert np.abs(nope.run(pixels) - alibi).max() > 1e-3


@pytest.mark.parametrize("family, message", [
    ("dinov2", "not a dinov2 model: it has no learned positional embedding"),
    ("locat", "not a locat model"),
])
def test_a_named_family_the_tensors_contradict_is_refused(tmp_path, family, message):
    with pytest.raises(DinosawError, match=message):
        run_export(TINY / "weights_timm.pth", out_dir=tmp_path, family=family, config_path=TINY / "config.json")
    assert not list(tmp_path.iterdir())


def test_locat_without_positions_needs_its_training_grid(tmp_path):
    state = {k: v for k, v in torch.load(ZOO / "locat_weights.pth").items() if k != "pos_embed"}
    torch.save(state, tmp_path / "nope_locat.pth")
    with pytest.raises(DinosawError, match="locat_grid"):
        load_checkpoint(tmp_path / "nope_locat.pth")
    (tmp_path / "c.json").write_text(json.dumps({"locat_grid": [8, 8]}))
    config = load_checkpoint(tmp_path / "nope_locat.pth", config_path=tmp_path / "c.json").model.config
    assert (config.family, config.pos_embed_grid, config.locat_grid) == ("locat", None, (8, 8))


def test_cli_export_names_the_family_and_info_shows_it(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--checkpoint", str(ZOO / "locat_weights.pth"), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "(locat, 2 blocks, dim 64)" in result.output
    info = runner.invoke(main, ["info", str(tmp_path / "locat_vits14.onnx")])
    assert info.exit_code == 0 and json.loads(info.output)["family"] == "locat"
    bad = runner.invoke(main, ["export", "--checkpoint", str(ZOO / "locat_weights.pth"), "--family", "dinov2",
                               "-o", str(tmp_path / "x")])
    assert bad.exit_code != 0 and bad.output.startswith("Error: checkpoint is not a dinov2 model")


def test_bias_kinds():
    assert not attention_bias(2, 3, 6, BiasConfig(kind="none")).any()
    assert attention_bias(2, 3, 6).min() == -1.0
    with pytest.raises(ValueError, match="kind"):
        BiasConfig(kind="gaussian")


def test_a_dinov2_without_registers_loads_with_its_class_row_folded(tmp_path):
    """timm's vit_small_patch14_dinov2 layout: no registers, pos_embed (1, 1 + g*g, C) with the class token's row."""
    config = ViTConfig(embed_dim=64, depth=1, num_heads=2, num_register_tokens=0, family="dinov2", pos_embed_grid=(4, 4))
    reference = ViT(config).eval()
    state = {k: v for k, v in reference.state_dict().items() if k != "reg_token"}
    cls_row = torch.randn(1, 1, 64)
    state["cls_token"] = state["cls_token"] - cls_row
    state["pos_embed"] = torch.cat([cls_row, state["pos_embed"]], dim=1)
    torch.save(state, tmp_path / "noreg.pth")
    loaded = load_checkpoint(tmp_path / "noreg.pth").model
    assert (loaded.config.num_register_tokens, loaded.config.pos_embed_grid) == (0, (4, 4))
    pixels = torch.from_numpy(pixel_values(56, 70))
    with torch.no_grad():
        assert torch.allclose(loaded(pixels, None), reference(pixels, None), atol=1e-5)
