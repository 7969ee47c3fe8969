"""Checkpoint loading: both key layouts, prefixes, pos_embed, learned slopes, clear errors."""
import contextlib
import json
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dinosaw_deploy.engine.bias import attention_bias  # noqa: E402
from dinosaw_deploy.errors import DinosawError  # noqa: E402
from dinosaw_deploy.export.checkpoint import load_checkpoint, normalize_state_dict, resolve_checkpoint  # noqa: E402

from .conftest import TINY, golden_cases  # noqa: E402

CONFIG = TINY / "config.json"


@pytest.fixture(scope="module")
def timm_state():
    return torch.load(TINY / "weights_timm.pth", weights_only=True)


def save(tmp_path, state, name="w.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def features(model, case):
    h, w = (int(v) for v in case["grid"])
    with torch.no_grad():
        return model(torch.from_numpy(case["input"]), torch.from_numpy(np.array(attention_bias(h, w)))).numpy()


@pytest.mark.parametrize("prefix", ["model.", "module.", "vit.", "module.model."])
def test_prefixed_legacy_layout_loads(tmp_path, timm_state, prefix):
    legacy = {prefix + k: v for k, v in timm_state.items()}
    legacy[prefix + "pos_embed"] = torch.zeros(1, 1369, 96)
    loaded = load_checkpoint(save(tmp_path, legacy), config_path=CONFIG)
    case = golden_cases(TINY)["img56x84"]
    assert np.abs(features(loaded.model, case) - case["feature_map"]).max() <= 1e-4
    assert len(loaded.sha256) == 64


def test_nonzero_pos_embed_is_a_dinov2_and_refused_as_alibi(tmp_path, timm_state):
    path = save(tmp_path, dict(timm_state, pos_embed=torch.ones(1, 1369, 96)))
    with pytest.raises(DinosawError, match="non-zero pos_embed.*--family dinov2"):
        load_checkpoint(path, config_path=CONFIG, family="alibi-dv2")
    assert load_checkpoint(path, config_path=CONFIG).model.config.family == "dinov2"
    assert normalize_state_dict(dict(timm_state, pos_embed=torch.zeros(1, 1369, 96)))[1] is None


def test_missing_and_unexpected_keys_listed(tmp_path, timm_state):
    state = {k: v for k, v in timm_state.items() if k != "norm.bias"}
    state["blocks.0.attn.extra"] = torch.zeros(3)
    with pytest.raises(DinosawError) as err:
        load_checkpoint(save(tmp_path, state), config_path=CONFIG)
    assert "missing keys: norm.bias" in str(err.value) and "unexpected keys: blocks.0.attn.extra" in str(err.value)


def test_architecture_from_shapes_and_options(tmp_path, timm_state):
    path = save(tmp_path, timm_state)
    with pytest.raises(DinosawError, match="num_heads"):
        load_checkpoint(path)  # 96 is not a multiple of 64: heads cannot be guessed
    cfg = load_checkpoint(path, overrides={"num_heads": 6}).model.config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.num_register_tokens, cfg.mlp_ratio) == (96, 2, 6, 4, 4.0)
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"num_heads": 6, "depth": 3}))
    with pytest.raises(DinosawError, match="depth=3"):
        load_checkpoint(path, config_path=flat)


def test_learned_slopes_are_used(tmp_path, timm_state):
    state = dict(timm_state)
    for i in range(2):
        state[f"blocks.{i}.attn.m"] = torch.full((6, 1, 1), 2.0)
    loaded = load_checkpoint(save(tmp_path, state), config_path=CONFIG)
    assert loaded.model.config.learned_slopes
    case = golden_cases(TINY)["img56x84"]
    # slope 2 differs from the golden slope 1 ...
    assert np.abs(features(loaded.model, case) - case["feature_map"]).max() > 1e-3
    # ... and slope 2 with bias b equals slope 1 with bias 2b
    plain = load_checkpoint(TINY / "weights_timm.pth", config_path=CONFIG).model
    h, w = (int(v) for v in case["grid"])
    with torch.no_grad():
        doubled = plain(torch.from_numpy(case["input"]), 2 * torch.from_numpy(np.array(attention_bias(h, w)))).numpy()
    np.testing.assert_allclose(features(loaded.model, case), doubled, atol=1e-5)


def test_pickled_objects_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1), "payload": object()}, path)
    with pytest.raises(DinosawError, match="cannot read checkpoint"):
        load_checkpoint(path, config_path=CONFIG)


def test_garbage_file(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DinosawError, match="cannot read checkpoint"):
        load_checkpoint(path)


def test_offline_download_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DinosawError, match="--checkpoint PATH"):
        resolve_checkpoint(None)
    with pytest.raises(DinosawError, match="hf://OWNER/REPO/FILE"):
        resolve_checkpoint("hf://only-owner")
    with pytest.raises(DinosawError, match="not found"):
        resolve_checkpoint(tmp_path / "missing.pth")


def test_hub_probe_leaves_the_process_socket_timeout_alone(monkeypatch):
    """_hub_reachable used to reset socket.setdefaulttimeout to None for the whole process."""
    from huggingface_hub import constants

    from dinosaw_deploy.export.checkpoint import _hub_reachable

    calls = []

    def connect(address, timeout=None, *args, **kwargs):
        calls.append((address, timeout))
        if address[0] == "hub.invalid":
            raise socket.gaierror("unresolvable")
        return contextlib.nullcontext()

    def resolve(*args, **kwargs):  # no network in tests, whichever call a probe makes
        raise socket.gaierror("unresolvable")

    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    previous = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(7.5)
        monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
        assert _hub_reachable(timeout=3.0) is False
        assert socket.getdefaulttimeout() == 7.5
        monkeypatch.setattr(constants, "ENDPOINT", "http://mirror.example:8080")
        assert _hub_reachable(timeout=3.0) is True and socket.getdefaulttimeout() == 7.5
        assert calls == [(("hub.invalid", 443), 3.0), (("mirror.example", 8080), 3.0)]  # its own timeout
        monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
        assert _hub_reachable() is True and len(calls) == 2  # behind a proxy: no direct probe
    finally:
        socket.setdefaulttimeout(previous)


@pytest.mark.parametrize("content", ["[1, 2]", "3", '{"architecture": [96]}', '{"alibi": "wrap"}'])
def test_config_that_is_not_an_object_is_one_clear_error(tmp_path, timm_state, content):
    config = tmp_path / "c.json"
    config.write_text(content)
    with pytest.raises(DinosawError, match="c.json: expected a JSON object"):
        load_checkpoint(save(tmp_path, timm_state), config_path=config)
