"""The distillation loop: stages, AdamW, checkpoints in the released format, resume, logging."""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from dinosaw_deploy.engine.bias import BiasConfig, attention_bias
from dinosaw_deploy.errors import DinosawError
from dinosaw_deploy.files import atomic_path, check_output, file_sha256, output_lock

from ..checkpoint import load_checkpoint, resolve_checkpoint
from ..model import ViT
from .data import ImageFolder, find_images
from .recipe import Recipe, load_recipe
from .targets import TargetCache, cosine_loss, distill_targets
from .teacher import load_teacher, student_from_teacher


@dataclass
class Position:
    """Where training stands: the next (stage, epoch, batch) to run and the optimizer steps taken."""

    stage: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0


@dataclass
class TrainResult:
    output: Path
    steps: int  # optimizer steps in total (over resumed runs)
    last_loss: float | None  # mean loss of the last epoch or log interval run here
    finished: bool  # False when stopped early by ``max_steps``


def state_path(output: Path) -> Path:
    """The resume file beside the weights: model, optimizer, position and what the run depends on."""
    return output.with_name(output.name + ".state")


def log_path(output: Path) -> Path:
    return output.with_name(output.name + ".log.jsonl")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DinosawError("--device cuda was asked for but PyTorch sees no CUDA GPU (use --device cpu)")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise DinosawError(f"unknown device {name!r}: {exc}") from None


def autocast_for(device: torch.device) -> Callable[[], AbstractContextManager]:
    """bf16 autocast on CUDA, plain float32 elsewhere."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext


def save_weights(student: ViT, path: Path) -> None:
    """The released (timm) layout: a plain float32 state dict that ``export`` loads unchanged."""
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().float().cpu() for k, v in student.state_dict().items()}, tmp)


def _epoch_order(seed: int, stage: int, epoch: int, count: int) -> torch.Tensor:
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + stage * 1009 + epoch))


def _make_student(teacher: ViT, init: str | os.PathLike | None) -> tuple[ViT, BiasConfig]:
    config = teacher.config
    if init is None:
        return student_from_teacher(teacher), BiasConfig(num_prefix_tokens=config.num_prefix_tokens)
    loaded = load_checkpoint(init, overrides={"num_heads": config.num_heads})
    mine, theirs = loaded.model.config.to_dict(), config.to_dict()
    position = ("learned_slopes", "family", "pos_embed_grid")  # how each knows position: differs by design
    differ = [k for k in theirs if k not in position and mine[k] != theirs[k]]
    if differ:
        raise DinosawError(
            "--init and --teacher have different architectures: "
            + ", ".join(f"{k} {mine[k]} vs {theirs[k]}" for k in differ)
        )
    return loaded.model, loaded.bias


class _Run:
    """One invocation of :func:`train`: the models, data and bookkeeping shared by its stages."""

    def __init__(self, recipe: Recipe, teacher: ViT, student: ViT, bias: BiasConfig,
                 paths: list[Path], output: Path, fingerprint: dict[str, Any], device: torch.device,
                 targets_dir: Path | None, workers: int, max_steps: int | None, echo: Callable[[str], None]) -> None:
        self.recipe, self.teacher, self.student, self.bias = recipe, teacher, student, bias
        self.paths, self.output, self.fingerprint, self.device = paths, output, fingerprint, device
        self.targets_dir, self.workers, self.max_steps, self.echo = targets_dir, workers, max_steps, echo
        self.autocast = autocast_for(device)
        self.position = Position()
        self.steps_here = 0
        self.last_loss: float | None = None

    def save(self, optimizer: torch.optim.Optimizer | None) -> None:
        state = {
            "student": {k: v.detach().cpu() for k, v in self.student.state_dict().items()},
            "optimizer": optimizer.state_dict() if optimizer is not None else {},
            "position": asdict(self.position),
            **self.fingerprint,
        }
        with atomic_path(state_path(self.output)) as tmp:
            torch.save(state, tmp)
        save_weights(self.student, self.output)

    def log(self, record: dict[str, Any]) -> None:
        with log_path(self.output).open("a") as fh:
            fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    def targets(self, dataset: ImageFolder, batch_size: int) -> TargetCache | None:
        if self.targets_dir is None:
            return None
        cache = TargetCache(self.targets_dir, dataset, {"teacher_sha256": self.fingerprint["teacher_sha256"],
                                                       "zero_channels": list(self.recipe.zero_channels)})
        if not cache.is_fresh():
            self.echo(f"precomputing teacher targets for {len(dataset)} images at {dataset.size} px -> {cache.path}")
            cache.build(self.teacher, self.recipe.zero_channels, batch_size=batch_size, device=self.device,
                        autocast=self.autocast, workers=self.workers)
        return cache

    def _advance(self, index: int, epoch: int, batch: int, per_epoch: int) -> None:
        """Move :attr:`position` past ``batch`` of ``epoch`` in stage ``index``."""
        step, epochs = self.position.step + 1, self.recipe.stages[index].epochs
        if batch + 1 < per_epoch:
            self.position = Position(index, epoch, batch + 1, step)
        elif epoch + 1 < epochs:
            self.position = Position(index, epoch + 1, 0, step)
        else:
            self.position = Position(index + 1, 0, 0, step)

    def run_stage(self, index: int, optimizer_state: dict) -> bool:
        """Train stage ``index`` from :attr:`position`; False when ``max_steps`` stopped it early."""
        stage, recipe, config = self.recipe.stages[index], self.recipe, self.student.config
        dataset = ImageFolder(self.paths, stage.image_size, config.patch_size)
        cache = self.targets(dataset, stage.batch_size)
        optimizer = torch.optim.AdamW(self.student.parameters(), lr=stage.lr, weight_decay=recipe.weight_decay)
        if optimizer_state:
            optimizer.load_state_dict(optimizer_state)
        grid = stage.image_size // config.patch_size
        bias = torch.from_numpy(np.array(attention_bias(grid, grid, config.num_heads, self.bias))).to(self.device)
        per_epoch = math.ceil(len(dataset) / stage.batch_size)
        self.student.train()
        for epoch in range(self.position.epoch, stage.epochs):
            order = _epoch_order(recipe.seed, index, epoch, len(dataset)).split(stage.batch_size)
            first = self.position.batch
            loader = DataLoader(dataset, batch_sampler=[b.tolist() for b in order[first:]],
                                num_workers=self.workers, pin_memory=self.device.type == "cuda")
            interval, epoch_losses, tic = [], [], time.perf_counter()
            for batch, (image_index, pixels) in enumerate(loader, first):
                pixels = pixels.to(self.device, non_blocking=True)
                with self.autocast():
                    target = (cache[image_index].to(self.device) if cache is not None
                              else distill_targets(self.teacher, pixels, recipe.zero_channels))
                    loss = cosine_loss(self.student(pixels, bias), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                interval.append(float(loss.detach()))
                self._advance(index, epoch, batch, per_epoch)
                self.steps_here += 1
                step, end_of_epoch = self.position.step, batch + 1 == per_epoch
                if step % recipe.log_every == 0 or end_of_epoch:
                    rate = len(interval) * stage.batch_size / max(time.perf_counter() - tic, 1e-9)
                    self.last_loss = sum(interval) / len(interval)
                    self.echo(f"{stage.name} epoch {epoch + 1}/{stage.epochs} batch {batch + 1}/{per_epoch} "
                              f"step {step}: loss {self.last_loss:.4f} (cosine {1 - self.last_loss:.4f}), "
                              f"{rate:.1f} img/s")
                    self.log({"stage": stage.name, "epoch": epoch + 1, "batch": batch + 1, "step": step,
                              "loss": self.last_loss, "lr": stage.lr, "images_per_s": rate})
                    epoch_losses += interval
                    interval, tic = [], time.perf_counter()
                stopping = self.max_steps is not None and self.steps_here >= self.max_steps
                if step % recipe.save_every == 0 or end_of_epoch or stopping:
                    self.save(optimizer if self.position.stage == index else None)
                if stopping:
                    return False
            self.log({"stage": stage.name, "epoch": epoch + 1, "step": self.position.step,
                      "epoch_mean_loss": sum(epoch_losses) / max(len(epoch_losses), 1)})
        return True


def train(
    teacher: str | os.PathLike,
    images: str | os.PathLike,
    output: str | os.PathLike,
    *,
    init: str | os.PathLike | None = None,
    recipe: Recipe | str | os.PathLike | None = None,
    num_heads: int | None = None,
    device: str = "auto",
    targets_dir: str | os.PathLike | None = None,
    workers: int = 0,
    max_steps: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] = lambda _msg: None,
) -> TrainResult:
    """Distil an ALiBi-Dv2 student from a DINOv2 ``teacher`` on the images under ``images``.

    The student starts from the teacher's weights minus the positional embedding (or from ``init``)
    and is written to ``output`` (``.pth``, released layout) at every checkpoint; ``output.state``
    holds what ``resume=True`` needs and ``output.log.jsonl`` the loss log. ``max_steps`` stops this
    call after that many optimizer steps (checkpointed), e.g. to fit a cluster job's time limit.
    """
    output = Path(output)
    max_workers = 4 * (os.cpu_count() or 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= max_workers:
        raise DinosawError(f"workers must be an integer in 0..{max_workers} (4 per CPU core), got {workers!r}")
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if output.suffix != ".pth":
        raise DinosawError(f"the student checkpoint must end in .pth, got {output.name}")
    inputs = [Path(p) for p in (teacher, images, init) if p is not None and not str(p).startswith("hf://")]
    with output_lock([output, state_path(output), log_path(output)]):  # one run per checkpoint
        check_output(output, inputs, overwrite or resume)
        if not resume and not overwrite and state_path(output).exists():
            raise DinosawError(f"{state_path(output)} is left from an earlier run: pass --resume to continue it "
                               "or --overwrite to start again")
        run_device = resolve_device(device)
        teacher_path = resolve_checkpoint(teacher)
        teacher_model = load_teacher(teacher_path, num_heads).to(run_device)
        config = teacher_model.config
        bad = [c for c in recipe.zero_channels if c >= config.embed_dim]
        if bad:
            raise DinosawError(f"zero_channels {bad} do not exist: the model has {config.embed_dim} channels")
        for stage in recipe.stages:
            if stage.image_size % config.patch_size:
                raise DinosawError(f"stage {stage.name}: image_size {stage.image_size} is not a multiple of "
                                   f"the patch size {config.patch_size}")
        paths = find_images(images)
        student, bias = _make_student(teacher_model, init)
        fingerprint = {
            "recipe": json.dumps(recipe.to_dict(), sort_keys=True),
            "teacher_sha256": file_sha256(teacher_path),
            "images_sha256": hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest(),
            "bias": json.dumps(bias.to_dict(), sort_keys=True),
        }
        run = _Run(recipe, teacher_model, student.to(run_device), bias, paths, output, fingerprint, run_device,
                   Path(targets_dir) if targets_dir is not None else None, workers, max_steps, echo)
        optimizer_state: dict = {}
        if resume:
            run.position, optimizer_state = _restore(output, student, fingerprint)
            echo(f"resuming at step {run.position.step} (stage {run.position.stage + 1}, "
                 f"epoch {run.position.epoch + 1}, batch {run.position.batch + 1})")
        else:
            log_path(output).unlink(missing_ok=True)  # a fresh run starts a fresh log
            run.save(None)  # the starting point, so even an early interruption can be resumed
        echo(f"training on {len(paths)} images ({run_device.type}); stages: "
             + ", ".join(f"{s.name} {s.image_size} px x {s.epochs} epochs" for s in recipe.stages))
        for index in range(run.position.stage, len(recipe.stages)):
            if not run.run_stage(index, optimizer_state):
                break
            optimizer_state = {}
        finished = run.position.stage == len(recipe.stages)
        return TrainResult(output, run.position.step, run.last_loss, finished)


def _restore(output: Path, student: ViT, fingerprint: dict[str, Any]) -> tuple[Position, dict]:
    path = state_path(output)
    if not path.is_file():
        raise DinosawError(f"nothing to resume: {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DinosawError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    for key, value in fingerprint.items():
        if state.get(key) != value:
            raise DinosawError(f"cannot resume: the {key.split('_')[0]} differs from the run that wrote {path.name}")
    student.load_state_dict(state["student"], strict=True)
    return Position(**state["position"]), state["optimizer"]
