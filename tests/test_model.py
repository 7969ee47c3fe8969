"""The PyTorch ALiBi-Dv2 reproduces the reference outputs and builds from any config."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dinosaw_deploy.engine.bias import attention_bias  # noqa: E402
from dinosaw_deploy.export.checkpoint import load_checkpoint  # noqa: E402
from dinosaw_deploy.export.model import ViT, ViTConfig, count_parameters  # noqa: E402

from .conftest import golden_cases, golden_sets  # noqa: E402


def run(model, case):
    h, w = (int(v) for v in case["grid"])
    bias = torch.from_numpy(np.array(attention_bias(h, w, model.config.num_heads)))
    with torch.no_grad():
        return model(torch.from_numpy(case["input"]), bias).numpy(), model.forward_tokens(
            torch.from_numpy(case["input"]), bias
        ).numpy()


@pytest.mark.parametrize("root", golden_sets())
def test_matches_golden(root):
    model = load_checkpoint(root / "weights_timm.pth", config_path=root / "config.json").model
    for name, case in golden_cases(root).items():
        features, tokens = run(model, case)
        assert features.shape == case["feature_map"].shape, name
        assert np.abs(features - case["feature_map"]).max() <= 1e-4, name
        assert np.abs(tokens - case["tokens"]).max() <= 1e-4, name


@pytest.mark.parametrize("root", golden_sets())
def test_bias_matters(root):
    """The golden cases discriminate the bias: dropping it must break the match."""
    model = load_checkpoint(root / "weights_timm.pth", config_path=root / "config.json").model
    case = next(iter(golden_cases(root).values()))
    h, w = (int(v) for v in case["grid"])
    with torch.no_grad():
        no_bias = model(torch.from_numpy(case["input"]), torch.zeros(1, 1, 5 + h * w, 5 + h * w)).numpy()
    assert np.abs(no_bias - case["feature_map"]).max() > 1e-2


def test_full_vits14_constructs():
    model = ViT(ViTConfig())
    assert len(model.blocks) == 12 and model.config.num_prefix_tokens == 5
    assert 21_500_000 < count_parameters(model) < 22_500_000  # ViT-S/14 + 4 registers, no pos_embed
    x = torch.zeros(1, 3, 28, 42)
    with torch.no_grad():
        out = model(x, torch.from_numpy(np.array(attention_bias(2, 3, 6))))
    assert out.shape == (1, 384, 2, 3)


def test_config_validation():
    with pytest.raises(ValueError):
        ViTConfig(embed_dim=100, num_heads=6)
