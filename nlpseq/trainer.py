"""The training loop, the same for every task, and the small pieces around it.

A task supplies batches, a model whose ``forward(batch, carry)`` returns ``(loss_sum, count,
carry)`` and a dev evaluation. :func:`train_steps` only trains: it steps through the epochs
and yields an :class:`EvalPoint` whenever the dev set is due. :func:`train` answers each one:
it evaluates, lets :class:`Selection` keep the best model, decay the learning rate on a
plateau and stop early, commits a checkpoint (:class:`nlpseq.checkpoint.RunDir`) and logs.
:class:`Budget` stops at ``train.max_minutes``; :class:`WeightAverage` evaluates an average
of the weights. Under ``torchrun`` the model trains with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nlpseq import checkpoint as ckpt
from nlpseq import native
from nlpseq.config import PipelineConfig, TrainConfig, save_config
from nlpseq.cpuload import OtherLoad, contention_warning, usable_cores
from nlpseq.errors import NlpseqError
from nlpseq.optim import Adam, clip_grads_
from nlpseq.runtime import keep_freed_memory, log_stderr, resolve_device, seed_everything
from nlpseq.tasks import task_class
from nlpseq.tasks.base import Log, Task


@dataclass
class TrainerState:
    """What resuming needs besides tensors (saved as JSON in every checkpoint)."""

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
    epoch_loss: float = 0.0  # summed training loss of ``epoch`` so far, and its count
    epoch_count: int = 0
    finished: bool = False
    stopped: str = ""  # why it finished: epochs, early stopping, time budget
    optimizer: dict = field(default_factory=dict)
    carry: Any = None  # nesting of the recurrent state carried across batches (mid-epoch)


@dataclass
class TrainResult:
    """The trained task (with its best model loaded) and its dev metrics."""

    task: Task
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    run_dir: Path


@dataclass
class EvalPoint:
    """A moment in training when the dev set is due."""

    epoch: int  # 1-based label of the epoch the evaluation belongs to
    train_loss: float  # mean training loss over the epoch so far
    tokens_per_s: float
    out_of_time: bool
    carry: Any  # the recurrent state the next batch continues from


# --- pieces around the loop ---------------------------------------------------------------
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
        return {f"average/{i}": a for i, a in enumerate(self.average)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, a in enumerate(self.average):
                a.copy_(tensors[f"average/{i}"])


class Budget:
    """Wall-clock budget (``train.max_minutes``) across resumed processes."""

    def __init__(self, max_minutes: float, elapsed_before: float):
        self.limit = max_minutes * 60 if max_minutes > 0 else math.inf
        self.before = elapsed_before
        self.started = time.monotonic()
        self.eval_seconds = 0.0  # the last evaluation's duration, to stop before the next

    def elapsed(self) -> float:
        return self.before + time.monotonic() - self.started

    def fraction(self) -> float:
        return self.elapsed() / self.limit

    def left(self) -> float:
        return self.limit - self.elapsed()

    def exhausted(self) -> bool:
        """True when one more evaluation (and a second of training) would not fit."""
        return self.elapsed() + 1.2 * self.eval_seconds + 1.0 >= self.limit


class Selection:
    """Model selection on one dev metric, with early stopping and reduce-on-plateau."""

    def __init__(self, metric: str, higher: bool, config: TrainConfig):
        self.metric, self.higher, self.config = metric, higher, config

    def update(self, state: TrainerState, value: float, epoch: int) -> bool:
        """Record an evaluation in ``state``; True when it is the best so far."""
        best = state.best
        improved = best is None or (value > best if self.higher else value < best)
        if improved:
            state.best, state.best_epoch = value, epoch
            state.bad_evals = state.plateau_evals = 0
            return True
        state.bad_evals += 1
        state.plateau_evals += 1
        if self.config.schedule == "plateau" and (
            state.plateau_evals > self.config.schedule_patience
        ):
            state.lr_scale *= self.config.schedule_factor
            state.plateau_evals = 0
        return False

    def should_stop(self, state: TrainerState) -> bool:
        return self.config.patience > 0 and state.bad_evals >= self.config.patience


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


# --- one training process: what the loop and its pieces share ------------------------------------
@dataclass
class Training:
    """Everything one training process holds, set up once by :func:`start`."""

    config: PipelineConfig
    run: ckpt.RunDir
    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer
    state: TrainerState
    selection: Selection
    budget: Budget
    device: torch.device
    rank: int = 0
    world: int = 1
    average: WeightAverage | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    carry: Any = None  # restored recurrent state for a mid-epoch resume
    log: Log = log_stderr

    @property
    def writes(self) -> bool:
        return self.rank == 0


def start(config: PipelineConfig, run: ckpt.RunDir, log: Log) -> Training:
    """Device, process group, task, model, optimizer; fresh or from the run's checkpoint."""
    t = config.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = resolve_device(t.device)
    if device.type == "cpu":
        keep_freed_memory()
    rank, world = _distributed(device)
    committed = run.current() is not None
    resume = t.resume and committed
    if not resume and committed:
        raise NlpseqError(
            "run directory already holds a model; choose another --out or set train.resume=true",
            run.path,
        )
    seed_everything(t.seed)
    task = task_class(config.task)(config, device)
    task.prepare(log, artifacts=run.path if resume else None)
    model = task.init_model(log, pretrained=not resume)
    metric = config.eval.metric or task.default_metric
    if metric not in task.metrics:
        raise NlpseqError(
            f"eval.metric {metric!r} is not one of {', '.join(task.metrics)}", config.source
        )
    training = Training(
        config, run, task, model, make_optimizer(model, t), TrainerState(),
        Selection(metric, task.metrics[metric], t), Budget(t.max_minutes, 0.0), device,
        rank, world, WeightAverage(model, t.ema) if t.ema > 0 else None, log=log,
    )
    if resume:
        _restore(training)
    elif training.writes:
        with ckpt.atomic_path(run.config) as tmp:
            save_config(config, tmp)
        task.save_artifacts(run.path)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"model: {type(model).__name__}, {n_params:,} trainable parameters, device {device}")
    for message in slow_path_warnings(config, device):
        log(f"warning: {message}")
    return training


def _restore(s: Training) -> None:
    """Continue from the committed checkpoint: weights, optimizer, RNG, averages, carry."""
    folder = s.run.current()
    ckpt.check_trained_with(s.config, folder, Path(s.config.source or s.run.config))
    s.state = _trainer_state(folder / ckpt.TRAINER_STATE)
    ckpt.load_weights(s.model, folder / ckpt.LAST_WEIGHTS)
    extra = ckpt.load_optimizer(s.optimizer, folder / ckpt.OPTIMIZER, s.state.optimizer)
    torch.set_rng_state(extra["rng"])
    if s.average is not None:
        s.average.load(extra)
    s.carry = _unflatten(s.state.carry, extra, s.device)
    s.history = ckpt.read_jsonl(folder / ckpt.HISTORY)
    if not s.history:  # every checkpoint records at least its own evaluation
        raise NlpseqError("history is missing or empty; the run directory is damaged",
                          folder / ckpt.HISTORY)
    s.budget.before = s.state.elapsed
    t = s.config.train
    s.log(f"resuming {s.run.path} at epoch {s.state.epoch + 1}, batch {s.state.batch}")
    # A finished run continues when the new settings allow more: more epochs, or a larger
    # time budget; a run that stopped early stays stopped.
    if s.state.finished and (
        s.state.stopped == "early stopping" or s.state.epoch >= t.epochs
        or (t.max_minutes > 0 and s.state.elapsed + 1.0 >= t.max_minutes * 60)
    ):
        s.log("that run had finished; nothing to do")
    else:
        s.state.finished = False


def _trainer_state(path: Path) -> TrainerState:
    record = ckpt.read_json(path)
    try:
        return TrainerState(**record)
    except TypeError:  # another JSON shape, or keys of something else
        raise NlpseqError("not a trainer state; the run directory is damaged", path) from None


# --- the loop ------------------------------------------------------------------------------
def train_steps(s: Training, progress: bool = True) -> Iterator[EvalPoint]:
    """Train, yielding at every evaluation point; the caller evaluates and may stop."""
    t, state = s.config.train, s.state
    trained = s.model
    if s.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(s.model)
    autocast = torch.autocast(s.device.type, dtype=torch.bfloat16,
                              enabled=t.bf16 and s.device.type == "cuda")
    # from the config: a resumed optimizer's groups hold the last scheduled rate, not the base
    base_lrs = [t.lr for _ in s.optimizer.param_groups]
    batches = s.task.train_batches(state.epoch, s.rank, s.world)
    if not batches:
        raise NlpseqError("no training batches: the training data is empty", s.config.data.train)
    total_steps = t.epochs * len(batches)
    carry = s.carry if state.batch > 0 else s.task.train_carry()
    while state.epoch < t.epochs:
        evals = {round(len(batches) * (i + 1) / t.evals_per_epoch)
                 for i in range(t.evals_per_epoch)}
        tokens, epoch_start = 0, time.monotonic()
        bar = _progress(len(batches), state.epoch, s.budget, progress)
        bar.update(state.batch)
        s.model.train()
        for index in range(state.batch, len(batches)):
            progress_frac = max(state.step / max(total_steps, 1), s.budget.fraction())
            factor = lr_factor(t, state.step, progress_frac, state.lr_scale)
            for group, base in zip(s.optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            batch = batches[index].to(s.device)
            with autocast:
                loss, count, carry = trained(batch, carry)
            _check_finite(loss, s)
            update(s.model, s.optimizer, loss, count, t.clip)
            if s.average is not None:
                s.average.update()
            state.step, state.batch = state.step + 1, index + 1
            state.epoch_loss += loss.item()
            state.epoch_count += int(count)
            tokens += batch.num_tokens
            state.tokens += batch.num_tokens
            speed = tokens / max(time.monotonic() - epoch_start, 1e-9)
            mean_loss = state.epoch_loss / max(state.epoch_count, 1)
            bar.step(mean_loss, speed)
            out_of_time = _any_rank(s.budget.exhausted(), s.world)
            if state.batch in evals or out_of_time:
                label = state.epoch + 1
                if state.batch == len(batches):
                    state.epoch, state.batch = state.epoch + 1, 0
                    state.epoch_loss, state.epoch_count = 0.0, 0
                    carry = s.task.train_carry()
                yield EvalPoint(label, mean_loss, speed, out_of_time, carry)
                s.model.train()
        bar.close()
        if state.epoch < t.epochs:
            batches = s.task.train_batches(state.epoch, s.rank, s.world)


def _check_finite(loss: torch.Tensor, s: Training) -> None:
    if not torch.isfinite(loss):
        raise NlpseqError(
            f"loss is {loss.item()} at epoch {s.state.epoch + 1}, step {s.state.step}; "
            f"training stopped and the last good checkpoint in {s.run.path} is kept "
            "(try a lower train.lr or train.clip)"
        )


# --- answering an evaluation point: evaluate, select, commit, log -----------------------
def evaluate(s: Training, point: EvalPoint) -> tuple[dict[str, Any], bool, dict | None]:
    """Dev metrics (with averaged weights when configured), whether they are the best so far
    and, if so, a copy of the weights that scored them (on the writing rank)."""
    started = time.monotonic()
    with s.average.applied() if s.average else contextlib.nullcontext():
        metrics = s.task.evaluate(s.model)
        improved = s.selection.update(s.state, float(metrics[s.selection.metric]), point.epoch)
        best = ckpt.weights_state(s.model) if improved and s.writes else None
    s.budget.eval_seconds = time.monotonic() - started
    return metrics, improved, best


def commit(s: Training, point: EvalPoint | None, metrics: dict | None, best: dict | None) -> None:
    """One checkpoint: the evaluation's record and everything resuming needs, as a unit."""
    state = s.state
    state.elapsed = s.budget.elapsed()
    extra = {"rng": torch.get_rng_state(), **(s.average.state() if s.average else {})}
    state.carry, carried = _flatten(point.carry if point else None)
    tensors, state.optimizer = ckpt.optimizer_tensors(s.optimizer, {**extra, **carried})
    writers = {
        ckpt.LAST_WEIGHTS: ckpt.tensors_writer(ckpt.weights_state(s.model)),
        ckpt.OPTIMIZER: ckpt.tensors_writer(tensors),
        ckpt.TRAINER_STATE: ckpt.json_writer(asdict(state)),
        ckpt.HISTORY: ckpt.jsonl_writer(s.history),
        ckpt.TRAINED_WITH: ckpt.json_writer(ckpt.trained_with(s.config)),
    }
    if best is not None:
        writers[ckpt.WEIGHTS] = ckpt.tensors_writer(best)
        writers[ckpt.METRICS] = ckpt.json_writer({
            "selection_metric": s.selection.metric, "best_epoch": state.best_epoch,
            "step": state.step, "dev": metrics,
        })
    keep = tuple(name for name in (ckpt.WEIGHTS, ckpt.METRICS) if name not in writers)
    if s.writes:
        s.run.commit(writers, keep)


def record(s: Training, point: EvalPoint, metrics: dict[str, Any], improved: bool) -> dict:
    """The history line of one evaluation, also logged."""
    entry = {
        "epoch": point.epoch, "step": s.state.step, "elapsed_s": round(s.budget.elapsed(), 1),
        "train_loss": point.train_loss, "train_tokens_per_s": round(point.tokens_per_s, 1),
        "lr": s.optimizer.param_groups[0]["lr"],
        **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
    }
    value = metrics[s.selection.metric]
    s.log(f"epoch {point.epoch} step {s.state.step}: train loss {point.train_loss:.4f}, "
          f"dev {s.selection.metric} {value:.4f}{' *' if improved else ''} "
          f"({point.tokens_per_s:,.0f} tokens/s)")
    return entry


class ContentionWatch:
    """Warns once when other processes kept the cores busy that torch's threads wanted."""

    def __init__(self, s: Training):
        # DDP's other ranks are other processes too, but meant to share the cores
        self.load = OtherLoad() if s.world == 1 and s.device.type == "cpu" else None

    def check(self, log: Log) -> None:
        if self.load is None:
            return
        warning = contention_warning(self.load.cores(), torch.get_num_threads(), usable_cores())
        if warning:
            log(f"warning: {warning}")
            self.load = None


def train(
    config: PipelineConfig,
    out_dir: str | Path,
    *,
    log: Log = log_stderr,
    progress: bool = True,
    on_evaluation: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``config``'s task into ``out_dir``; returns the best model's task and metrics.

    ``on_evaluation`` sees each evaluation's history record once its checkpoint is committed;
    an exception it raises (e.g. a search pruning the trial) stops training there."""
    run = ckpt.RunDir(out_dir)
    run.check_writable()
    first = int(os.environ.get("RANK", "0")) == 0
    if not first:
        log, progress = (lambda _message: None), False
    with run.writing() if first else contextlib.nullcontext():
        s = start(config, run, log)
        _loop(s, progress, on_evaluation)
        if first and config.train.curves:
            _draw_curves(s)
    return _result(s)


def _loop(s: Training, progress: bool,
          on_evaluation: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Answer every evaluation point until the epochs, the patience or the budget run out."""
    watch = ContentionWatch(s)
    for point in [] if s.state.finished else train_steps(s, progress):
        watch.check(s.log)
        metrics, improved, best = evaluate(s, point)
        s.history.append(record(s, point, metrics, improved))
        stopped = ("time budget" if point.out_of_time else
                   "early stopping" if s.selection.should_stop(s.state) else
                   "epochs" if s.state.epoch >= s.config.train.epochs else "")
        s.state.finished, s.state.stopped = bool(stopped), stopped
        commit(s, point, metrics, best)
        if on_evaluation is not None:
            on_evaluation(s.history[-1])
        if s.state.finished:
            break
    if s.world > 1:
        import torch.distributed as dist

        dist.barrier()
    s.log(f"stopped ({s.state.stopped}) after {s.budget.elapsed() / 60:.1f} min; best dev "
          f"{s.selection.metric} {s.state.best} at epoch {s.state.best_epoch}")


def _draw_curves(s: Training) -> None:
    """curves.png beside the checkpoints; without matplotlib a note says how to get it."""
    from nlpseq.plot import curves_png

    try:
        curves_png([s.run.path], s.run.path / "curves.png")
    except NlpseqError as err:
        s.log(f"note: no curves.png: {err.message}")


def _result(s: Training) -> TrainResult:
    """The best weights loaded into the task's model, and the run's metrics."""
    folder = s.run.current()
    s.task.load_weights(folder / ckpt.WEIGHTS)
    metrics = ckpt.read_json(folder / ckpt.METRICS)
    metrics["stopped"] = s.state.stopped
    return TrainResult(s.task, metrics, s.history, s.run.path)


# --- helpers ------------------------------------------------------------------------------
def _flatten(carry: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """A carried recurrent state (tensors nested in tuples/lists) as a JSON nesting of leaf
    numbers and the tensors by number."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any) -> Any:
        if node is None:
            return None
        if isinstance(node, torch.Tensor):
            tensors[f"carry/{len(tensors)}"] = node
            return len(tensors) - 1
        if isinstance(node, (tuple, list)):
            return [walk(child) for child in node]
        raise TypeError(f"cannot checkpoint a carried state of type {type(node).__name__}")

    return walk(carry), tensors


def _unflatten(nesting: Any, tensors: dict[str, torch.Tensor], device: torch.device) -> Any:
    if nesting is None:
        return None
    if isinstance(nesting, int):
        return tensors[f"carry/{nesting}"].to(device)
    return tuple(_unflatten(child, tensors, device) for child in nesting)


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


class _Bar:
    """tqdm over an epoch's batches, with the loss, speed and the time budget left."""

    def __init__(self, total: int, epoch: int, budget: Budget):
        from tqdm import tqdm

        self.budget = budget
        self.steps = 0
        self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}", file=sys.stderr,
                        mininterval=1.0, leave=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.bar.update(n)

    def step(self, loss: float, speed: float) -> None:
        self.bar.update(1)
        self.steps += 1
        if self.steps % 10 == 0:
            extra = {}
            if self.budget.limit < math.inf:
                extra["budget_left"] = f"{max(self.budget.left(), 0) / 60:.1f}m"
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{speed:,.0f}", **extra,
                                 refresh=False)

    def close(self) -> None:
        self.bar.close()


class _NoBar:
    def update(self, n: int) -> None: ...
    def step(self, loss: float, speed: float) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, epoch: int, budget: Budget, enabled: bool) -> _Bar | _NoBar:
    return _Bar(total, epoch, budget) if enabled else _NoBar()
