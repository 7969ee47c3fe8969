"""Write the reference outputs the model-family tests compare our exports with (run once, offline, by hand).

Needs timm (and for LocAt, LocAtViT's code: https://github.com/sinahmr/LocAtViT), in an environment of its own:
timm needs torchvision, which does not import beside the CPU torch the project pins, e.g.

    python3 -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==1.0.19
    (timm 1.0.19 is the release LocAtViT pins)
    /tmp/refvenv/bin/python tests/data/zoo/make_goldens.py --locat-repo PATH/TO/LocAtViT

* ``dinov2_reg4_golden.npz``: timm's ``vit_small_patch14_reg4_dinov2`` (``dynamic_img_size=True``) with weights
  drawn by :func:`zoo_weights.timm_dinov2_state` (the tests draw the same ones without timm), fed
  :func:`zoo_weights.pixel_values` at 518x518 and 364x518: every 4th channel of ``forward_features``' patch tokens,
  and every channel's mean and std over tokens.
* ``locat_weights.pth`` + ``locat_golden.npz``: a small LocAtViT in our token layout (patch 14, 4 registers,
  LayerScale, learned PE on an 8x8 grid, Gaussian-augmented attention, PRR) with random weights, at its 8x8 training
  grid and at 6x9: the patch tokens of ``prr(forward_features(x))``, as LocAtViT's own dense evaluation takes them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from zoo_weights import DINOV2_SIZES, LOCAT_SIZES, pixel_values, timm_dinov2_state  # noqa: E402


def dinov2() -> None:
    import timm

    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, dynamic_img_size=True).eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v) for k, v in timm_dinov2_state(shapes).items()}, strict=True)
    out = {"timm_version": np.array(timm.__version__), "torch_version": np.array(torch.__version__),
           "keys": np.array(sorted(shapes))}
    for h, w in DINOV2_SIZES:
        with torch.no_grad():
            tokens = model.forward_features(torch.from_numpy(pixel_values(h, w)))[:, model.num_prefix_tokens:]
        grid = tokens[0].T.reshape(-1, h // 14, w // 14).numpy()
        out[f"channels_{h}x{w}"] = grid[::4]
        out[f"mean_{h}x{w}"] = grid.mean(axis=(1, 2))
        out[f"std_{h}x{w}"] = grid.std(axis=(1, 2))
    np.savez_compressed(HERE / "dinov2_reg4_golden.npz", **out)


def locat(repo: Path) -> None:
    sys.path.insert(0, str(repo))
    from models.vit import LocAtViT  # the reference implementation

    torch.manual_seed(0)
    model = LocAtViT(img_size=112, patch_size=14, embed_dim=64, depth=2, num_heads=2, reg_tokens=4,
                     no_embed_class=True, init_values=0.3, dynamic_img_size=True, num_classes=0,
                     gaug=True, prr=True, store_metrics=False).eval()
    with torch.no_grad():  # make every part matter: a smooth strong PE, kernels that are neither flat nor spiky
        for name, p in model.named_parameters():
            if "gaug.log_alpha.bias" in name:  # amplitude ~3: the kernel moves the attention
                p.fill_(3.0)
            elif "gaug" in name:
                p.normal_(0.0, 0.5)
            elif name == "pos_embed":
                ys, xs = torch.meshgrid(torch.linspace(0, 3, 8), torch.linspace(0, 3, 8), indexing="ij")
                p.copy_(torch.stack([torch.sin(ys * (1 + c % 5) + xs * (c % 3)) for c in range(64)], -1).reshape(1, 64, 64))
            elif name.endswith(("cls_token", "reg_token")):
                p.normal_(0.0, 0.3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, HERE / "locat_weights.pth")
    out = {}
    for h, w in LOCAT_SIZES:
        with torch.no_grad():
            tokens = model.prr(model.forward_features(torch.from_numpy(pixel_values(h, w))))[:, model.num_prefix_tokens:]
        out[f"features_{h}x{w}"] = tokens[0].T.reshape(-1, h // 14, w // 14).numpy()
    np.savez_compressed(HERE / "locat_golden.npz", **out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--locat-repo", type=Path, required=True, help="a checkout of sinahmr/LocAtViT")
    args = parser.parse_args()
    dinov2()
    locat(args.locat_repo)
