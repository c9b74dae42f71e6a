"""The training loop: AdamW, warm-up + cosine decay, gradient clipping, EMA of the weights, seeding."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from edgekit.atomic_io import atomic_path
from edgekit.errors import InputError
from edgekit.models.base import DetectorModel
from edgekit.models.training.data import AugmentConfig, TrainingSet
from edgekit.models.training.losses import make_loss
from edgekit.models.training.losses.base import DetectionLoss, loss_value
from edgekit.progress import progress_bar
from edgekit.spec import ModelSpec

# ==============================================================================================
# Training loop
# ==============================================================================================

def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch and return the numpy ``Generator`` that drives data order and augmentation."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. ``warmup_iterations`` ramp the learning rate linearly from 0; then
    it follows a cosine from ``learning_rate`` down to ``learning_rate * final_lr_fraction``.
    EMA decay ramps as ``ema_decay * (1 - exp(-step / ema_ramp))`` so early averages are short."""

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 2e-3
    final_lr_fraction: float = 0.05
    weight_decay: float = 0.01
    warmup_iterations: int = 100
    grad_clip: float = 10.0
    ema_decay: float = 0.998
    ema_ramp: float = 200.0
    seed: int = 0
    num_threads: int = 2
    channels_last: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    progress: bool = True


@dataclass
class TrainResult:
    """The trained model (EMA weights, eval mode), per-epoch mean losses, wall-clock and CPU
    time (``cpu_seconds`` sums all threads of this process: on a shared machine it is the
    steadier measure of what training costs)."""

    model: nn.Module
    history: list[dict[str, float]]
    seconds: float
    iterations: int
    cpu_seconds: float = 0.0


class ModelEMA:
    """Exponential moving average of every floating-point entry of a model's state_dict
    (weights and BatchNorm statistics): ema = d * ema + (1 - d) * current."""

    def __init__(self, model: nn.Module, decay: float, ramp: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.ramp))
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(current[name].detach(), alpha=1 - d)
            else:
                value.copy_(current[name])


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv / linear weights only: decaying BN scales and biases hurts small nets."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_norm = isinstance(module, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.BatchNorm1d))
            (no_decay if name == "bias" or is_norm else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _save_atomic(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a sibling temporary file, then rename: an interrupted save leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def train(model: DetectorModel, data: TrainingSet, config: TrainConfig = TrainConfig(),
          loss_fn: DetectionLoss | None = None,
          on_epoch_end: Callable[[int, nn.Module, dict[str, float]], None] | None = None,
          resume_path: str | Path | None = None) -> TrainResult:
    """Train ``model`` (with ``.spec``) on ``data`` for ``config.epochs`` epochs.

    Returns a :class:`TrainResult` whose model is a copy holding the EMA weights (in eval mode);
    ``model`` itself keeps the raw weights. ``on_epoch_end(epoch, ema_model, mean_losses)`` is
    called after every epoch (e.g. to evaluate).

    ``resume_path``: after every epoch the complete training state (weights, EMA, optimizer,
    both random generators, history) is written there; if the file exists at the start,
    training continues from it, exactly where it stopped — the result is the same as an
    uninterrupted run. It must come from the same family, data size and ``config``.
    """
    if config.epochs < 1 or config.batch_size < 1:
        raise InputError(f"training needs epochs >= 1 and batch_size >= 1, got {config.epochs} and {config.batch_size}")
    torch.set_num_threads(max(1, int(config.num_threads)))
    rng = seed_everything(config.seed)
    spec: ModelSpec = model.spec
    loss_fn = loss_fn or make_loss(spec)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.learning_rate,
                                  betas=(0.9, 0.999))
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = min(config.warmup_iterations, max(total_steps // 3, 1))

    def learning_rate(step: int) -> float:
        if step < warmup:
            return config.learning_rate * (step + 1) / warmup
        progress = (step - warmup) / max(total_steps - warmup, 1)
        low = config.final_lr_fraction
        return config.learning_rate * (low + (1 - low) * 0.5 * (1 + math.cos(math.pi * progress)))

    # NHWC convolutions are ~15 % faster on CPU (oneDNN); the weights go back to NCHW at the end.
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    # nn.Module.to takes memory_format (see its docstring); torch's overloads of it leave the keyword out
    model.to(memory_format=memory_format)  # type: ignore[call-overload]
    ema = ModelEMA(model, config.ema_decay, config.ema_ramp)
    history: list[dict[str, float]] = []
    step = 0
    first_epoch = 0
    start = time.perf_counter()
    cpu_start = time.process_time()
    # Threads and progress bars do not change the result, so a run may resume with other values.
    fingerprint = f"{spec.family} {spec.input_size} images={len(data)} {replace(config, num_threads=0, progress=False)!r}"
    resume_path = Path(resume_path) if resume_path is not None else None
    if resume_path is not None and resume_path.is_file():
        state = torch.load(resume_path, weights_only=True)
        if state.get("fingerprint") != fingerprint:
            raise InputError(f"{resume_path}: was written by a different training run "
                             f"({state.get('fingerprint')!r}); expected {fingerprint!r}. Delete it to start over")
        model.load_state_dict(state["model"])
        ema.module.load_state_dict(state["ema"])
        ema.updates = int(state["ema_updates"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        history, step, first_epoch = list(state["history"]), int(state["step"]), int(state["epoch"])
        # Keep the clocks running from where the interrupted run left them.
        start -= float(state["seconds"])
        cpu_start -= float(state["cpu_seconds"])
    model.train()
    for epoch in range(first_epoch, config.epochs):
        sums: dict[str, float] = {}
        count = 0
        bar = progress_bar(data.batches(config.batch_size, rng, config.augment),
                           f"{spec.family} {epoch + 1}/{config.epochs}", total=steps_per_epoch, unit="batch",
                           quiet=not config.progress)
        for batch in bar:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step)
            outputs = model(batch.images.contiguous(memory_format=memory_format))
            if isinstance(outputs, Tensor):
                outputs = (outputs,)
            result = loss_fn(outputs, batch.targets)
            if not torch.isfinite(result.total):
                raise FloatingPointError(f"{spec.family}: loss became {float(result.total)} at epoch {epoch + 1} "
                                         f"step {step}; parts {result.parts}")
            optimizer.zero_grad(set_to_none=True)
            result.total.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            ema.update(model)
            step += 1
            count += 1
            sums["loss"] = sums.get("loss", 0.0) + loss_value(result.total)
            for key, value in result.parts.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix({k: f"{v / count:.3f}" for k, v in sums.items()})
        bar.close()
        means = {k: v / max(count, 1) for k, v in sums.items()}
        means["epoch"] = epoch + 1
        means["seconds"] = time.perf_counter() - start
        means["cpu_seconds"] = time.process_time() - cpu_start
        history.append(means)
        if resume_path is not None:
            _save_atomic({
                "fingerprint": fingerprint, "epoch": epoch + 1, "step": step, "model": model.state_dict(),
                "ema": ema.module.state_dict(), "ema_updates": ema.updates, "optimizer": optimizer.state_dict(),
                "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "history": history,
                "seconds": means["seconds"], "cpu_seconds": means["cpu_seconds"],
            }, resume_path)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, ema.module, means)
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    trained: nn.Module = ema.module.eval().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    for name in ("spec", "config"):
        if hasattr(model, name):
            setattr(trained, name, getattr(model, name))
    return TrainResult(trained, history, time.perf_counter() - start, step, time.process_time() - cpu_start)
