"""Find, download and load the checkpoints of every family we export (method.md §2, docs/models.md).

Accepted layouts: timm's (no prefix), the legacy wrapper's (``model.``-prefixed keys), ``vit.``/``module.``
prefixes, and Meta's original DINOv2 names (``register_tokens``, an unused ``mask_token``). A positional
embedding is kept when it is non-zero (a ``dinov2`` or learned-PE ``locat`` model) and dropped when it is
zero (the released ALiBi-Dv2 carries a zero one); rows it has for prefix tokens (Meta's and original timm's
class-token slot) are folded into those tokens, as timm's converter does, since they are never resized.
The family is read from the tensors (``attn.gaug.*`` -> locat, a non-zero ``pos_embed`` -> dinov2, else
alibi-dv2) and can be named instead (``nope`` cannot be told from alibi-dv2 by its keys).
Always read with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import json
import math
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

from .model import FAMILIES, ViT, ViTConfig

HF_SCHEME = "hf://"
# The released ALiBi-Dv2 ViT-S/14 (name as in the reference's checkpoint table; HF repo rmdocherty/dino-saw).
DEFAULT_CHECKPOINT = "hf://rmdocherty/dino-saw/alibi_dv2_vits14_reg.pth"
PREFIXES = ("module.", "model.", "vit.")
SLOPE_ALIASES = {"constant": "constant", "fixed": "geometric", "geometric": "geometric", "learned": "constant"}


@dataclass
class LoadedCheckpoint:
    model: ViT
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


META_RENAMES = {"register_tokens": "reg_token"}  # Meta's DINOv2 names -> timm's
UNUSED = ("mask_token", "head.", "fc_norm.", "head_drop.")  # pretraining/classifier leftovers


def normalize_state_dict(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """(tensors under timm's names without the positional embedding, the ``pos_embed`` or None when absent
    or all zero); refuses anything that is not a dict of tensors."""
    if not isinstance(state, dict) or not state:
        raise DinosawError("checkpoint is not a state dict (a dict of tensors)")
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out: dict[str, torch.Tensor] = {}
    pos_embed = None
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise DinosawError(f"checkpoint entry {key!r} is not a tensor")
        name = key
        while name.startswith(PREFIXES):
            name = name.split(".", 1)[1]
        name = META_RENAMES.get(name, name)
        if name.startswith(UNUSED):
            continue
        if name == "pos_embed":
            pos_embed = value if torch.count_nonzero(value) else None
            continue
        out[name] = value
    return out, pos_embed


def split_prefix_rows(state: dict[str, torch.Tensor], pos_embed: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The patch part of ``pos_embed`` and its square grid; rows for CLS (and registers) are added to those
    tokens in ``state``."""
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise DinosawError(f"pos_embed must be a (1, N, C) tensor, got shape {tuple(pos_embed.shape)}")
    if "cls_token" not in state:
        raise DinosawError("checkpoint lacks 'cls_token': not a ViT state dict")
    length = pos_embed.shape[1]
    registers = state["reg_token"].shape[1] if "reg_token" in state else 0
    for prefix in (0, 1, 1 + registers):
        side = math.isqrt(max(length - prefix, 0))
        if side and side * side == length - prefix:
            break
    else:
        raise DinosawError(f"pos_embed has {length} positions: not a square patch grid (with or without prefix tokens)")
    if prefix:
        state["cls_token"] = state["cls_token"] + pos_embed[:, :1]
    if prefix > 1:
        state["reg_token"] = state["reg_token"] + pos_embed[:, 1:prefix]
    return pos_embed[:, prefix:], (side, side)


def detect_family(state: dict[str, torch.Tensor], pos_embed: torch.Tensor | None) -> str:
    """``locat`` (a Gaussian kernel's weights), ``dinov2`` (a learned positional embedding) or ``alibi-dv2``."""
    if any(k.endswith("attn.gaug.log_var.weight") for k in state):
        return "locat"
    return "dinov2" if pos_embed is not None else "alibi-dv2"


def check_family(family: str, detected: str) -> None:
    """Refuse a named family the tensors contradict (``nope`` is an alibi-dv2-shaped checkpoint)."""
    if family not in FAMILIES:
        raise DinosawError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    compatible = {"alibi-dv2": {"alibi-dv2"}, "nope": {"alibi-dv2"}, "dinov2": {"dinov2"}, "locat": {"locat"}}
    if detected not in compatible[family]:
        hints = {
            "dinov2": "it has a non-zero pos_embed: it is a DINOv2 with a learned positional embedding "
                      "(export it with --family dinov2)",
            "locat": "it has LocAt Gaussian-kernel weights (attn.gaug.*): export it with --family locat",
            "alibi-dv2": "it has no learned positional embedding and no Gaussian kernel",
        }
        raise DinosawError(f"checkpoint is not a {family} model: {hints[detected]}")


def _arch_from_config_json(data: Any, source: str = "config") -> tuple[dict[str, Any], dict[str, Any]]:
    """(architecture fields, bias fields) from a golden-style config.json or a flat dict; any other JSON
    (a list, a number, sections that are not objects) is one clear error."""
    arch = data.get("architecture", data) if isinstance(data, dict) else None
    alibi = data.get("alibi", data.get("bias", {})) if isinstance(data, dict) else None
    if not isinstance(arch, dict) or not isinstance(alibi, dict):
        raise DinosawError(f"{source}: expected a JSON object of architecture fields (or with 'architecture' and "
                           f"'alibi' objects), got {type(data).__name__ if arch is None else 'a malformed section'}")
    return dict(arch), dict(alibi)


def infer_config(
    state: dict[str, torch.Tensor],
    given: dict[str, Any] | None = None,
    *,
    family: str = "alibi-dv2",
    pos_embed_grid: tuple[int, int] | None = None,
) -> ViTConfig:
    """Architecture from tensor shapes; ``given`` fills what shapes cannot tell (num_heads, a locat model's
    training grid when it has no positional embedding, PRR) and must agree with what they do."""
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
        "family": family,
        "layer_scale": "blocks.0.ls1.gamma" in state,
        "pos_embed_grid": pos_embed_grid,
    }
    if slopes is not None:
        inferred["num_heads"] = slopes.shape[0]
    kernel = state.get("blocks.0.attn.gaug.log_var.weight")
    if kernel is not None and embed_dim % kernel.shape[1] == 0:  # LocAt's kernel reads one head's query
        inferred["num_heads"] = embed_dim // kernel.shape[1]
    for key, value in inferred.items():
        agrees = given.get(key, value) == value or (
            key == "mlp_ratio" and abs(given[key] - value) < 1e-6
            or key == "pos_embed_grid" and isinstance(given[key], (list, tuple)) and tuple(given[key]) == value
        )
        if not agrees:
            raise DinosawError(f"config says {key}={given[key]} but the checkpoint's tensors say {value}")
    fields = {**given, **inferred}
    if family == "locat":
        fields.setdefault("locat_grid", pos_embed_grid)
        fields.setdefault("prr", True)
        if fields["locat_grid"] is None:
            raise DinosawError("a locat checkpoint without a positional embedding does not tell its training grid: "
                               "pass --config with \"locat_grid\": [rows, cols] (image size / patch size)")
    else:
        fields.pop("locat_grid", None)
    if "num_heads" not in fields:
        if embed_dim % 64:
            raise DinosawError(
                f"cannot infer num_heads for embed_dim {embed_dim}: pass --num-heads or --config"
            )
        fields["num_heads"] = embed_dim // 64  # DINOv2 convention: 64-dim heads
    try:
        return ViTConfig.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise DinosawError(f"invalid architecture: {exc}") from None


def bias_config_from(alibi: dict[str, Any], config: ViTConfig) -> BiasConfig:
    """The host-side bias of a model: ALiBi's settings for ``alibi-dv2``, zeros for every other family."""
    if config.family != "alibi-dv2":
        return BiasConfig(kind="none", num_prefix_tokens=config.num_prefix_tokens)
    slope_type = alibi.get("slope_type", alibi.get("slopes", "constant"))
    if slope_type not in SLOPE_ALIASES:
        raise DinosawError(f"unknown ALiBi slope type {slope_type!r}")
    try:
        return BiasConfig(
            slopes=SLOPE_ALIASES[slope_type],
            wrap=bool(alibi.get("wrap", True)),
            metric=alibi.get("metric", "euclidean"),
            normalize=bool(alibi.get("normalize", True)),
            num_prefix_tokens=config.num_prefix_tokens,
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


def read_state(path: Path, family: str | None = None) -> tuple[dict[str, torch.Tensor], str, tuple[int, int] | None]:
    """(state under our names, the family, the positional embedding's grid) of a checkpoint file; a learned
    positional embedding stays in ``state`` as its patch part."""
    state, pos_embed = normalize_state_dict(read_checkpoint_file(path))
    detected = detect_family(state, pos_embed)
    check_family(family or detected, detected)
    grid = None
    if pos_embed is not None:
        state["pos_embed"], grid = split_prefix_rows(state, pos_embed)
    if "reg_token" not in state and "cls_token" in state:  # a ViT without registers
        state["reg_token"] = state["cls_token"].new_zeros(1, 0, state["cls_token"].shape[-1])
    return state, family or detected, grid


def load_checkpoint(
    spec: str | os.PathLike | None,
    *,
    config_path: str | os.PathLike | None = None,
    overrides: dict[str, Any] | None = None,
    family: str | None = None,
) -> LoadedCheckpoint:
    """Resolve, read and load a checkpoint of any family (``family=None``: read from its tensors) in eval mode."""
    path = resolve_checkpoint(spec)
    arch_given: dict[str, Any] = {}
    alibi: dict[str, Any] = {}
    if config_path is not None:
        try:
            arch_given, alibi = _arch_from_config_json(json.loads(Path(config_path).read_text()), str(config_path))
        except (OSError, json.JSONDecodeError) as exc:
            raise DinosawError(f"cannot read config {config_path}: {exc}") from None
    arch_given.update({k: v for k, v in (overrides or {}).items() if v is not None})
    family = family or arch_given.pop("family", None)
    state, family, grid = read_state(path, family)
    given = {k: arch_given[k] for k in ViTConfig.__dataclass_fields__ if k in arch_given and k != "family"}
    config = infer_config(state, given, family=family, pos_embed_grid=grid)
    model = ViT(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise DinosawError(
            f"checkpoint {path.name} does not fit a {family} ViT {config.to_dict()}:"
            + (f"\n  missing keys: {', '.join(missing)}" if missing else "")
            + (f"\n  unexpected keys: {', '.join(unexpected)}" if unexpected else "")
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise DinosawError(f"checkpoint {path.name}: {exc}") from None
    return LoadedCheckpoint(
        model=model.eval(),
        bias=bias_config_from(alibi, config),
        source=str(spec) if spec is not None else DEFAULT_CHECKPOINT,
        sha256=file_sha256(path),
    )
