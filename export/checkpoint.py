"""Find, download and load ALiBi-Dv2 checkpoints (method.md §2).

Accepted: plain state dicts in the legacy wrapper layout (``model.``-prefixed timm keys plus a
zero ``model.pos_embed``) or the timm layout (no prefix, no ``pos_embed``); ``vit.`` and
``module.`` prefixes are stripped too, and a per-block learned slope ``blocks.i.attn.m`` is kept.
Always read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dinosaw_deploy.engine.bias import BiasConfig
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import file_sha256

from .model import AlibiDv2, AlibiDv2Config

HF_SCHEME = "hf://"
# The released ALiBi-Dv2 ViT-S/14 (name as in the reference's checkpoint table; HF repo rmdocherty/dino-saw).
DEFAULT_CHECKPOINT = "hf://rmdocherty/dino-saw/alibi_dv2_vits14_reg.pth"
PREFIXES = ("module.", "model.", "vit.")
SLOPE_ALIASES = {"constant": "constant", "fixed": "geometric", "geometric": "geometric", "learned": "constant"}


@dataclass
class LoadedCheckpoint:
    model: AlibiDv2
    bias: BiasConfig
    source: str
    sha256: str


def resolve_checkpoint(spec: str | os.PathLike | None) -> Path:
    """A local path for ``spec``: a file, ``hf://OWNER/REPO/FILE``, or None for the released weights."""
    spec = str(spec) if spec is not None else DEFAULT_CHECKPOINT
    if not spec.startswith(HF_SCHEME):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise DinosawError(f"checkpoint not found: {path}")
        return path
    parts = spec[len(HF_SCHEME) :].split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise DinosawError(f"expected hf://OWNER/REPO/FILE, got {spec!r}")
    owner, repo, filename = parts
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise DinosawError(
            "downloading needs huggingface_hub (pip install 'dinosaw-deploy[export]'), "
            "or pass a local file with --checkpoint PATH"
        ) from None
    offline_hint = "If this machine is offline, download the .pth elsewhere and pass it with --checkpoint PATH"
    try:
        return Path(hf_hub_download(repo_id=f"{owner}/{repo}", filename=filename, local_files_only=True))
    except Exception:  # not cached yet: go to the network below
        pass
    if not _hub_reachable():
        raise DinosawError(f"cannot download {spec}: the Hugging Face hub is unreachable. {offline_hint}")
    try:
        return Path(hf_hub_download(repo_id=f"{owner}/{repo}", filename=filename))
    except Exception as exc:  # offline, DNS, 404, gated repo: all mean "could not fetch"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DinosawError(
            f"could not download {spec} ({type(exc).__name__}: {reason[:200]}). {offline_hint}"
        ) from None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Fail fast (no minute of retries) when offline: HF_HUB_OFFLINE, or no connection to the hub within
    ``timeout`` s. The probe socket has its own timeout: the process-wide default is never touched.
    Behind an HTTP(S) proxy a direct probe proves nothing, so the download itself is tried."""
    from urllib.parse import urlparse
    from urllib.request import getproxies

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if getproxies().get("https"):
        return True
    url = urlparse(constants.ENDPOINT)
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:  # unresolvable host, refused or timed out
        return False


def normalize_state_dict(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes, drop the (zero) learned ``pos_embed``; refuse anything else odd."""
    if not isinstance(state, dict) or not state:
        raise DinosawError("checkpoint is not a state dict (a dict of tensors)")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise DinosawError(f"checkpoint entry {key!r} is not a tensor")
        name = key
        while name.startswith(PREFIXES):
            name = name.split(".", 1)[1]
        if name == "pos_embed":
            if torch.count_nonzero(value):
                raise DinosawError(
                    "checkpoint has a non-zero pos_embed: it is a DINOv2 with a learned positional "
                    "embedding, not an ALiBi-Dv2 (whose pos_embed is removed or zero)"
                )
            continue
        out[name] = value
    return out


def _arch_from_config_json(data: Any, source: str = "config") -> tuple[dict[str, Any], dict[str, Any]]:
    """(architecture fields, bias fields) from a golden-style config.json or a flat dict; any other JSON
    (a list, a number, sections that are not objects) is one clear error."""
    arch = data.get("architecture", data) if isinstance(data, dict) else None
    alibi = data.get("alibi", data.get("bias", {})) if isinstance(data, dict) else None
    if not isinstance(arch, dict) or not isinstance(alibi, dict):
        raise DinosawError(f"{source}: expected a JSON object of architecture fields (or with 'architecture' and "
                           f"'alibi' objects), got {type(data).__name__ if arch is None else 'a malformed section'}")
    return dict(arch), dict(alibi)


def infer_config(state: dict[str, torch.Tensor], given: dict[str, Any] | None = None) -> AlibiDv2Config:
    """Architecture from tensor shapes; ``given`` fills what shapes cannot tell (num_heads) and
    must agree with what they do."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    try:
        patch = state["patch_embed.proj.weight"]
        fc1 = state["blocks.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise DinosawError(f"checkpoint lacks {exc.args[0]!r}: not a ViT state dict") from None
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    embed_dim = patch.shape[0]
    slopes = state.get("blocks.0.attn.m")
    inferred: dict[str, Any] = {
        "embed_dim": embed_dim,
        "depth": depth,
        "patch_size": patch.shape[-1],
        "in_chans": patch.shape[1],
        "num_register_tokens": state["reg_token"].shape[1] if "reg_token" in state else 0,
        "mlp_ratio": fc1.shape[0] / embed_dim,
        "learned_slopes": slopes is not None,
    }
    if slopes is not None:
        inferred["num_heads"] = slopes.shape[0]
    for key, value in inferred.items():
        if key in given and given[key] != value and not (key == "mlp_ratio" and abs(given[key] - value) < 1e-6):
            raise DinosawError(f"config says {key}={given[key]} but the checkpoint's tensors say {value}")
    fields = {**given, **inferred}
    if "num_heads" not in fields:
        if embed_dim % 64:
            raise DinosawError(
                f"cannot infer num_heads for embed_dim {embed_dim}: pass --num-heads or --config"
            )
        fields["num_heads"] = embed_dim // 64  # DINOv2 convention: 64-dim heads
    try:
        return AlibiDv2Config.from_dict(fields)
    except ValueError as exc:
        raise DinosawError(f"invalid architecture: {exc}") from None


def bias_config_from(alibi: dict[str, Any], num_prefix_tokens: int) -> BiasConfig:
    slope_type = alibi.get("slope_type", alibi.get("slopes", "constant"))
    if slope_type not in SLOPE_ALIASES:
        raise DinosawError(f"unknown ALiBi slope type {slope_type!r}")
    try:
        return BiasConfig(
            slopes=SLOPE_ALIASES[slope_type],
            wrap=bool(alibi.get("wrap", True)),
            metric=alibi.get("metric", "euclidean"),
            normalize=bool(alibi.get("normalize", True)),
            num_prefix_tokens=num_prefix_tokens,
        )
    except ValueError as exc:
        raise DinosawError(f"invalid ALiBi settings: {exc}") from None


def read_checkpoint_file(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with one clear error for anything unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors, or objects refused by weights_only
        raise DinosawError(
            f"cannot read checkpoint {path}: not a PyTorch state dict of tensors ({type(exc).__name__}; "
            "files are read with weights_only=True, which refuses pickled objects)"
        ) from None


def load_checkpoint(
    spec: str | os.PathLike | None,
    *,
    config_path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
) -> LoadedCheckpoint:
    """Resolve, read and load a checkpoint into an :class:`AlibiDv2` in eval mode."""
    path = resolve_checkpoint(spec)
    arch_given: dict[str, Any] = {}
    alibi: dict[str, Any] = {}
    if config_path is not None:
        try:
            arch_given, alibi = _arch_from_config_json(json.loads(Path(config_path).read_text()), str(config_path))
        except (OSError, json.JSONDecodeError) as exc:
            raise DinosawError(f"cannot read config {config_path}: {exc}") from None
    arch_given.update({k: v for k, v in (overrides or {}).items() if v is not None})
    state = normalize_state_dict(read_checkpoint_file(path))
    config = infer_config(state, {k: arch_given[k] for k in AlibiDv2Config.__dataclass_fields__ if k in arch_given})
    model = AlibiDv2(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise DinosawError(
            f"checkpoint {path.name} does not fit ALiBi-Dv2 {config.to_dict()}:"
            + (f"\n  missing keys: {', '.join(missing)}" if missing else "")
            + (f"\n  unexpected keys: {', '.join(unexpected)}" if unexpected else "")
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise DinosawError(f"checkpoint {path.name}: {exc}") from None
    return LoadedCheckpoint(
        model=model.eval(),
        bias=bias_config_from(alibi, config.num_prefix_tokens),
        source=str(spec) if spec is not None else DEFAULT_CHECKPOINT,
        sha256=file_sha256(path),
    )
