"""``nlpseq prune``: structured pruning of the recurrent hidden units of a sentiment or NER run.

Each direction of each layer of the word encoder keeps ``keep`` of its hidden units, the units
whose weights matter most (the product of the L2 norms of the weights into the unit and out of
it), and every matrix shrinks accordingly: the gates' rows of the layer, its recurrent columns,
the next layer's input columns and the output layer's columns. The dense products themselves
get smaller, which is what makes a CPU faster (zeroed weights in unchanged matrices would not).
The result is an ordinary run directory with ``model.hidden_size`` set to the units kept.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nlpseq.errors import NlpseqError

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
TASKS = ("sentiment", "ner")


def _outputs_used(model: nn.Module, size: int) -> list[Tensor]:
    """Each consumer matrix of the encoder's outputs (D*H wide), as (rows, D*H) blocks."""
    weight = model.output.weight
    blocks = [weight[:, i * size : (i + 1) * size] for i in range(weight.size(1) // size)]
    if getattr(model, "attention", None) is not None:
        blocks.append(model.attention.weight)
    return blocks


def unit_order(encoder: nn.Module, consumers: list[list[Tensor]]) -> list[Tensor]:
    """Per layer, the units of each direction by importance, most important first: (D, H).

    ``consumers[l]``: the matrices that read layer l's outputs, each (rows, D*H)."""
    hidden, orders = encoder.hidden_size, []
    for rnn, readers in zip(encoder.layers, consumers):
        gates = GATES[encoder.cell]
        directions = []
        for d, suffix in enumerate(["", "_reverse"][: 2 if encoder.bidirectional else 1]):
            w_in = torch.cat([getattr(rnn, f"weight_ih_l0{suffix}"),
                              getattr(rnn, f"weight_hh_l0{suffix}")], dim=1)  # (G*H, I+H)
            incoming = w_in.view(gates, hidden, -1).pow(2).sum(dim=(0, 2))  # (H,)
            own = getattr(rnn, f"weight_hh_l0{suffix}").pow(2).sum(dim=0)  # (H,)
            block = slice(d * hidden, (d + 1) * hidden)
            outgoing = own + sum(r[:, block].pow(2).sum(dim=0) for r in readers)
            directions.append((incoming.sqrt() * outgoing.sqrt()).argsort(descending=True))
        orders.append(torch.stack(directions))
    return orders


def prune_state(model: nn.Module, cell: str, keep_units: int) -> dict[str, Tensor]:
    """The model's weights with ``keep_units`` units per direction and layer of
    ``model.encoder``, for a model built with that hidden size."""
    encoder, hidden = model.encoder, model.encoder.hidden_size
    size = encoder.output_size
    consumers = []  # per layer: the matrices reading its outputs
    for above in encoder.layers[1:]:
        consumers.append([above.weight_ih_l0] +
                         ([above.weight_ih_l0_reverse] if encoder.bidirectional else []))
    consumers.append(_outputs_used(model, size))
    orders = [order[:, :keep_units].sort(dim=1).values for order in
              unit_order(encoder, consumers)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    gates = GATES[cell]
    previous = None  # kept output columns of the layer below (None: the embedding side)
    for index, kept in enumerate(orders):
        columns = torch.cat([kept[d] + d * hidden for d in range(kept.size(0))])  # (D*k,)
        for d, suffix in enumerate(["", "_reverse"][: kept.size(0)]):
            rows = torch.cat([kept[d] + g * hidden for g in range(gates)])  # (G*k,)
            prefix = f"encoder.layers.{index}."
            w_ih = state[f"{prefix}weight_ih_l0{suffix}"][rows]
            state[f"{prefix}weight_ih_l0{suffix}"] = w_ih if previous is None else \
                w_ih[:, previous]
            state[f"{prefix}weight_hh_l0{suffix}"] = \
                state[f"{prefix}weight_hh_l0{suffix}"][rows][:, kept[d]]
            for name in ("bias_ih", "bias_hh"):
                state[f"{prefix}{name}_l0{suffix}"] = state[f"{prefix}{name}_l0{suffix}"][rows]
        previous = columns
    weight = state["output.weight"]
    state["output.weight"] = torch.cat([weight[:, i * size : (i + 1) * size][:, previous]
                                        for i in range(weight.size(1) // size)], dim=1)
    if "attention.weight" in state:
        state["attention.weight"] = state["attention.weight"][:, previous]
    return state


def fine_tune(task: Any, run_dir: Path, minutes: float, log: Callable[[str], None]
              ) -> dict[str, Any]:
    """Train ``task.model`` on the run's training data for ``minutes`` at the pipeline's
    learning rate (no schedule); returns the dev metrics after."""
    from nlpseq.trainer import make_optimizer, update

    task.prepare(log, artifacts=run_dir)  # the run's data, read with the run's artifacts
    train = task.config.train
    model, optimizer = task.model.train(), make_optimizer(task.model, train)
    deadline, epoch = time.monotonic() + minutes * 60, 0
    while time.monotonic() < deadline:
        for batch in task.train_batches(epoch):
            loss, count, _ = model(batch.to(task.device))
            update(model, optimizer, loss, count, train.clip)
            if time.monotonic() >= deadline:
                break
        epoch += 1
    model.eval()
    return task.evaluate(model)


def prune_run(run_dir: str | Path, out_dir: str | Path, keep: float, minutes: float = 0.0,
              log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Write ``out_dir``: ``run_dir`` with ``keep`` (0 < keep < 1) of each recurrent layer's
    hidden units, fine-tuned for ``minutes`` when > 0; returns the hidden sizes and parameter
    counts before and after (and the dev metrics after fine-tuning)."""
    import nlpseq
    from nlpseq.checkpoint import (
        CONFIG,
        POINTER,
        TRAINED_WITH,
        WEIGHTS,
        RunDir,
        save_weights,
        trained_with,
        write_json,
    )
    from nlpseq.config import save_config

    if not 0.0 < keep < 1.0:
        raise NlpseqError(f"--keep must be between 0 and 1, got {keep}")
    task = nlpseq.load(run_dir)
    if task.name not in TASKS:
        raise NlpseqError(f"prune takes a {' or '.join(TASKS)} run, not a {task.name} run")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise NlpseqError("the output folder exists and is not empty", out)
    hidden = task.config.model.hidden_size
    units = max(1, round(hidden * keep))
    state = prune_state(task.model, task.config.model.cell, units)
    config = dataclasses.replace(task.config, model=dataclasses.replace(
        task.config.model, hidden_size=units))
    smaller = type(task)(config)
    smaller.load_artifacts(Path(run_dir))
    smaller.init_model(lambda _m: None, pretrained=False)
    smaller.model.load_state_dict(state)
    tuned = fine_tune(smaller, Path(run_dir), minutes, log) if minutes > 0 else None
    source = RunDir(run_dir)
    folder = source.current()
    shutil.copytree(run_dir, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        "checkpoints", "onnx", ".lock", "curves.png"))
    target = out / folder.relative_to(source.path)
    target.mkdir(parents=True)
    save_config(config, out / CONFIG)
    save_weights(smaller.model, target / WEIGHTS)
    write_json(target / TRAINED_WITH, trained_with(config))
    write_json(out / POINTER, {"checkpoint": folder.name})
    result: dict[str, Any] = {"hidden_size": [hidden, units],
                              "parameters": [sum(p.numel() for p in m.parameters())
                                             for m in (task.model, smaller.model)]}
    if tuned is not None:
        result["dev_after_fine_tuning"] = {k: v for k, v in tuned.items()
                                           if isinstance(v, (int, float))}
    return result
