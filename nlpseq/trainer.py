"""The training loop, the same for every task.

A task supplies batches, a model whose ``forward(batch, carry)`` returns ``(loss_sum, count,
carry)`` and a dev evaluation; this module optimises, schedules the learning rate, stops
early or at the time budget, and keeps the run directory current (best weights, last
state for resume, history). Under ``torchrun`` it trains with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nlpseq import checkpoint as ckpt
from nlpseq import native
from nlpseq.config import PipelineConfig, TrainConfig, save_config
from nlpseq.cpuload import OtherLoad, contention_warning, usable_cores
from nlpseq.errors import NlpseqError
from nlpseq.optim import Adam, clip_grads_
from nlpseq.tasks import task_class
from nlpseq.tasks.base import Log, Task


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise NlpseqError("train.device is cuda but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class TrainerState:
    """What resuming needs besides weights and optimizer tensors (saved as JSON)."""

    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # batches of ``epoch`` already trained
    step: int = 0
    best: float | None = None
    best_epoch: int = -1
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    plateau_evals: int = 0  # evaluations since the last improvement or lr decay
    lr_scale: float = 1.0  # reduce-on-plateau multiplier
    elapsed: float = 0.0  # seconds trained before this process (resume)
    tokens: int = 0
    finished: bool = False
    stopped: str = ""  # why it finished: epochs, early stopping, time budget
    optimizer: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    """The trained task (with its best model loaded) and its dev metrics."""

    task: Task
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    run_dir: Path


class WeightAverage:
    """Exponential moving average of the trainable weights, swapped in for evaluation."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, backup)

    def state(self) -> dict[str, torch.Tensor]:
        return {str(i): a for i, a in enumerate(self.average)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, a in enumerate(self.average):
                a.copy_(tensors[str(i)])


def slow_path_warnings(config: PipelineConfig, device: torch.device) -> list[str]:
    """Settings that would silently do nothing or run slower than the user expects."""
    messages = []
    if config.train.bf16 and device.type != "cuda":
        messages.append(
            "train.bf16 applies on CUDA only and is ignored here; on CPU, model.bf16 "
            "(chargen, translate) autocasts the model where the CPU computes bfloat16 natively"
        )
    if getattr(config.model, "bf16", False) and not native.bf16_native(device.type):
        messages.append(
            "model.bf16 is ignored on this CPU: it has no native bfloat16 (AVX512-BF16 or "
            "AMX), where autocast would be emulated and slower, so the model runs float32"
        )
    return messages


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer: Adam / AdamW as :class:`nlpseq.optim.Adam` (one native pass
    over all CPU tensors per step; lazy updates for sparse embedding gradients), SGD as
    torch's fused kernel where it has one."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        fused = bool(params) and all(
            p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
        )
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
            fused=fused,
        )
    return Adam(params, lr=config.lr, weight_decay=config.weight_decay,
                decoupled_weight_decay=config.optimizer == "adamw")


def update(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor, count: int,
    clip: float,
) -> None:
    """One optimizer step on the mean of a summed ``loss`` over ``count`` items, with the
    gradient norm clipped to ``clip`` (0 = off; nlpseq's Adam clips inside its step)."""
    optimizer.zero_grad(set_to_none=True)
    (loss / max(count, 1)).backward()
    if isinstance(optimizer, Adam):
        optimizer.step(max_norm=clip)
        return
    if clip > 0:
        clip_gradients(model, clip)
    optimizer.step()


def clip_gradients(model: nn.Module, clip: float) -> None:
    """Scale all gradients of ``model`` so that their global L2 norm is at most ``clip``
    (:func:`nlpseq.optim.clip_grads_`)."""
    clip_grads_(list(model.parameters()), clip)


def lr_factor(config: TrainConfig, step: int, progress: float, plateau_scale: float) -> float:
    """Learning-rate multiplier: warmup, then the schedule; ``progress`` runs 0 -> 1."""
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    progress = min(max(progress, 0.0), 1.0)
    if config.schedule == "cosine":
        decay = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))
    elif config.schedule == "linear":
        decay = max(0.01, 1 - progress)
    elif config.schedule == "plateau":
        decay = plateau_scale
    else:
        decay = 1.0
    return warmup * decay


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


def _distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group that ``torchrun`` set up; (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def _any_rank(flag: bool, world: int) -> bool:
    """True when ``flag`` is true on any rank (so all ranks stop together)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def train(
    config: PipelineConfig,
    out_dir: str | Path,
    *,
    log: Log = log_stderr,
    progress: bool = True,
) -> TrainResult:
    """Train ``config``'s task into ``out_dir``; returns the best model's task and metrics."""
    started = time.monotonic()
    t = config.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    rank, world = _distributed(device)
    if rank != 0:
        log, progress = (lambda _message: None), False
    run_dir = Path(out_dir)
    resume = t.resume and (run_dir / ckpt.TRAINER_STATE).is_file()
    if not resume and (run_dir / ckpt.WEIGHTS).exists():
        raise NlpseqError(
            "run directory already holds a model; choose another --out or set train.resume=true",
            run_dir,
        )
    seed_everything(t.seed)
    task = task_class(config.task)(config)
    task.prepare(log, artifacts=run_dir if resume else None)
    task.device = device
    model = task.build_model(log, pretrained=not resume).to(device)
    optimizer = make_optimizer(model, t)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    average = WeightAverage(model, t.ema) if t.ema > 0 else None
    metric = config.eval.metric or task.default_metric
    if metric not in task.metrics:
        raise NlpseqError(
            f"eval.metric {metric!r} is not one of {', '.join(task.metrics)}", config.source
        )
    higher = task.metrics[metric]
    state = TrainerState()
    if resume:
        state = TrainerState(**ckpt.read_json(run_dir / ckpt.TRAINER_STATE))
        ckpt.load_weights(model, run_dir / ckpt.LAST_WEIGHTS)
        rng, extra = ckpt.load_optimizer(optimizer, run_dir / ckpt.OPTIMIZER, state.optimizer)
        if average is not None and extra:
            average.load(extra)
        if rng is not None:
            torch.set_rng_state(rng)
        log(f"resuming {run_dir} at epoch {state.epoch + 1}, batch {state.batch}")
        # A finished run continues when the new settings allow more: more epochs, or a larger
        # time budget; a run that stopped early stays stopped.
        if state.finished and (
            state.stopped == "early stopping"
            or state.epoch >= t.epochs
            or (t.max_minutes > 0 and state.elapsed + 1.0 >= t.max_minutes * 60)
        ):
            log("that run had finished; nothing to do")
        else:
            state.finished = False
    elif rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        with ckpt.atomic_path(run_dir / ckpt.CONFIG) as tmp:
            save_config(config, tmp)
        task.save_artifacts(run_dir)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"model: {type(model).__name__}, {n_params:,} trainable parameters, device {device}")

    trained: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.bf16 and
                              device.type == "cuda")
    for message in slow_path_warnings(config, device):
        log(f"warning: {message}")
    # DDP's other ranks are other processes too, but meant to share the cores
    neighbours = OtherLoad() if world == 1 and device.type == "cpu" else None
    budget = t.max_minutes * 60 if t.max_minutes > 0 else math.inf
    history = ckpt.read_jsonl(run_dir / ckpt.HISTORY) if resume else []
    eval_seconds = 0.0
    stop_reason = (state.stopped or "epochs") if state.finished else "epochs"
    batches_per_epoch = len(task.train_batches(0, rank, world))
    if batches_per_epoch == 0:
        raise NlpseqError("no training batches: the training data is empty", config.data.train)
    total_steps = t.epochs * batches_per_epoch

    elapsed_before = state.elapsed  # seconds trained by earlier processes (resume)

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - started

    def evaluate_and_save(train_loss: float, tokens_per_s: float, epoch_label: int) -> bool:
        """Evaluate on dev, keep the best weights; True when early stopping says stop."""
        nonlocal eval_seconds, neighbours
        if neighbours is not None:
            warning = contention_warning(neighbours.cores(), torch.get_num_threads(),
                                         usable_cores())
            if warning:
                log(f"warning: {warning}")
                neighbours = None  # once a run is enough
        t0 = time.monotonic()
        with average.applied() if average else contextlib.nullcontext():
            metrics = task.evaluate(model)
            value = float(metrics[metric])
            improved = state.best is None or (value > state.best if higher else value < state.best)
            if improved and rank == 0:
                ckpt.save_weights(model, run_dir / ckpt.WEIGHTS)
        eval_seconds = time.monotonic() - t0
        if improved:
            state.best, state.best_epoch = value, epoch_label
            state.bad_evals = state.plateau_evals = 0
        else:
            state.bad_evals += 1
            state.plateau_evals += 1
            if t.schedule == "plateau" and state.plateau_evals > t.schedule_patience:
                state.lr_scale *= t.schedule_factor
                state.plateau_evals = 0
        record = {
            "epoch": epoch_label, "step": state.step, "elapsed_s": round(elapsed(), 1),
            "train_loss": train_loss, "train_tokens_per_s": round(tokens_per_s, 1),
            "lr": optimizer.param_groups[0]["lr"], **_scalars(metrics),
        }
        history.append(record)
        mark = " *" if improved else ""
        log(f"epoch {epoch_label} step {state.step}: train loss {train_loss:.4f}, "
            f"dev {metric} {value:.4f}{mark} ({tokens_per_s:,.0f} tokens/s)")
        if rank == 0:
            if improved:
                ckpt.write_json(run_dir / ckpt.METRICS, {
                    "selection_metric": metric, "best_epoch": epoch_label,
                    "step": state.step, "dev": metrics,
                })
            ckpt.append_jsonl(run_dir / ckpt.HISTORY, record)
            ckpt.save_weights(model, run_dir / ckpt.LAST_WEIGHTS)
            state.optimizer = ckpt.save_optimizer(
                optimizer, run_dir / ckpt.OPTIMIZER, rng=torch.get_rng_state(),
                extra=average.state() if average else None,
            )
            state.elapsed = elapsed()
            ckpt.write_json(run_dir / ckpt.TRAINER_STATE, asdict(state))
        return t.patience > 0 and state.bad_evals >= t.patience

    stop = state.finished
    while not stop and state.epoch < t.epochs:
        batches = task.train_batches(state.epoch, rank, world)
        eval_points = {
            round(len(batches) * (i + 1) / t.evals_per_epoch) for i in range(t.evals_per_epoch)
        }
        carry = task.train_carry()
        loss_sum, loss_count, tokens, epoch_start = 0.0, 0, 0, time.monotonic()
        bar = _progress(len(batches), state.epoch, progress)
        bar.update(state.batch)
        model.train()
        for index in range(state.batch, len(batches)):
            progress_frac = max(state.step / max(total_steps, 1), elapsed() / budget)
            factor = lr_factor(t, state.step, progress_frac, state.lr_scale)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            batch = batches[index].to(device)
            with autocast:
                loss, count, carry = trained(batch, carry)
            if not torch.isfinite(loss):
                raise NlpseqError(
                    f"loss is {loss.item()} at epoch {state.epoch + 1}, step {state.step}; "
                    f"training stopped and the last good checkpoint in {run_dir} is kept "
                    "(try a lower train.lr or train.clip)"
                )
            update(model, optimizer, loss, count, t.clip)
            if average is not None:
                average.update()
            state.step += 1
            state.batch = index + 1
            loss_sum += loss.item()
            loss_count += int(count)
            tokens += batch.num_tokens
            state.tokens += batch.num_tokens
            speed = tokens / max(time.monotonic() - epoch_start, 1e-9)
            bar.update(1)
            if state.step % 10 == 0:
                bar.set_postfix(loss=f"{loss_sum / max(loss_count, 1):.4f}",
                                tok_s=f"{speed:,.0f}", refresh=False)
            out_of_time = elapsed() + 1.2 * eval_seconds + 1.0 >= budget
            if state.batch in eval_points or _any_rank(out_of_time, world):
                epoch_label = state.epoch + 1
                if state.batch == len(batches):
                    state.epoch, state.batch = state.epoch + 1, 0
                if evaluate_and_save(loss_sum / max(loss_count, 1), speed, epoch_label):
                    stop, stop_reason = True, "early stopping"
                model.train()
                if out_of_time:
                    stop, stop_reason = True, "time budget"
                if stop:
                    break
        bar.close()
    if not state.finished:
        state.finished, state.stopped = True, stop_reason
    if rank == 0 and (run_dir / ckpt.TRAINER_STATE).exists():
        state.elapsed = elapsed()
        ckpt.write_json(run_dir / ckpt.TRAINER_STATE, asdict(state))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    log(f"stopped ({stop_reason}) after {elapsed() / 60:.1f} min; best dev {metric} "
        f"{state.best} at epoch {state.best_epoch}")
    if (run_dir / ckpt.WEIGHTS).exists():
        ckpt.load_weights(model, run_dir / ckpt.WEIGHTS)
    model.eval()
    task.model = model
    metrics = ckpt.read_json(run_dir / ckpt.METRICS) if (run_dir / ckpt.METRICS).exists() else {}
    metrics["stopped"] = stop_reason
    return TrainResult(task, metrics, history, run_dir)


class _NoBar:
    def update(self, n: int = 1) -> None: ...
    def set_postfix(self, **kwargs) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, epoch: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}", file=sys.stderr, mininterval=1.0,
                leave=False, dynamic_ncols=True)
