"""Run directories: config, weights (safetensors), tokenizer, vocabularies, metrics, history.

Every file is written to a temporary name in the same directory and renamed into place, so a
run killed at any moment leaves the previous version of each file intact. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from nlpseq.errors import NlpseqError

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
METRICS = "metrics.json"
HISTORY = "history.jsonl"
LAST_WEIGHTS = "last.safetensors"
OPTIMIZER = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise NlpseqError(f"cannot read JSON: {err}", path) from None


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def append_jsonl(path: str | Path, record: dict) -> None:
    """Rewrite the history with one more record (atomic; histories are small)."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(old + json.dumps(record) + "\n", encoding="utf-8")


def save_weights(module: torch.nn.Module, path: str | Path) -> None:
    """State dict -> safetensors (tied weights stored once and re-tied on load)."""
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in module.state_dict().items():
        if value.numel() > 0 and value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        state[key] = value.detach().contiguous().cpu()
    with atomic_path(path) as tmp:
        save_file(state, tmp)


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    try:
        state = load_file(str(path))
    except (OSError, Exception) as err:
        raise NlpseqError(f"cannot read weights: {err}", path) from None
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ from the configured model
        problem = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise NlpseqError(f"weights do not match the model: {problem}", path) from None
    # Tied parameters are saved once; their aliases show up as missing and are fine.
    tied = {k for k in missing if _is_alias(module, k, state)}
    if set(missing) - tied or unexpected:
        raise NlpseqError(
            f"weights do not match the model (missing {sorted(set(missing) - tied)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})", path,
        )


def _is_alias(module: torch.nn.Module, key: str, saved: dict) -> bool:
    params = module.state_dict()
    return any(
        params[key].data_ptr() == params[other].data_ptr() for other in saved if other in params
    )


def save_optimizer(
    optimizer: torch.optim.Optimizer,
    path: str | Path,
    rng: torch.Tensor | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> dict:
    """Optimizer tensors (plus the RNG state and ``extra`` trainer tensors, e.g. averaged
    weights) -> safetensors; returns the JSON-able rest."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    if rng is not None:
        tensors["rng"] = rng
    for key, value in (extra or {}).items():
        tensors[f"extra/{key}"] = value.detach().contiguous().cpu()
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{name}"] = value
    with atomic_path(path) as tmp:
        save_file(tensors, tmp)
    return {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(
    optimizer: torch.optim.Optimizer, path: str | Path, rest: dict
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Restore what :func:`save_optimizer` wrote; returns the RNG state and extra tensors."""
    tensors = load_file(str(path))
    rng = tensors.pop("rng", None)
    extra = {
        k.removeprefix("extra/"): tensors.pop(k) for k in list(tensors) if k.startswith("extra/")
    }
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
    return rng, extra


def check_run_dir(run_dir: str | Path) -> Path:
    """A run directory must hold at least the config and the weights."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NlpseqError("run directory not found", run_dir)
    for name in (CONFIG, WEIGHTS):
        if not (run_dir / name).is_file():
            raise NlpseqError(f"not a checkpoint: {name} is missing", run_dir)
    return run_dir
