"""Run directories: config and artifacts written once, then checkpoints committed as units.

A run directory holds::

    config.yaml, tokenizer.json, ...   the pipeline and the task's artifacts (written at start)
    checkpoint.json                    names the current checkpoint: the commit point
    checkpoints/000007/                one checkpoint, complete:
        model.safetensors              best weights so far (what ``nlpseq.load`` uses)
        metrics.json                   the dev metrics of those weights
        history.jsonl                  one record per evaluation
        last.safetensors, optimizer.safetensors, trainer_state.json   what resuming needs

A checkpoint is written into a hidden folder, every file flushed to disk, the folder renamed
into ``checkpoints/`` and only then ``checkpoint.json`` replaced (atomically) to name it; the
previous checkpoint is deleted afterwards. A kill at any instant therefore leaves either the
previous checkpoint or the new one, whole, and the files of one checkpoint always describe
the same moment. Files that did not change (the best weights between improvements) are
hard-linked, not copied. Nothing is pickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from nlpseq.errors import NlpseqError

if TYPE_CHECKING:
    from nlpseq.config import PipelineConfig

CONFIG = "config.yaml"
POINTER = "checkpoint.json"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
WEIGHTS = "model.safetensors"
METRICS = "metrics.json"
HISTORY = "history.jsonl"
LAST_WEIGHTS = "last.safetensors"
OPTIMIZER = "optimizer.safetensors"
TRAINER_STATE = "trainer_state.json"
TRAINED_WITH = "trained_with.json"

#: config keys that shape the model or what it reads; weights trained under other values
#: would predict something else, so a run whose config.yaml differs here is refused
SHAPING = ("task", "tokenizer.", "model.", "data.tag_scheme", "embeddings.extend_vocab")
#: model keys that only matter while training or decoding, editable after training
NOT_SHAPING = frozenset({
    "model.dropout", "model.embedding_dropout", "model.word_dropout", "model.adversarial",
    "model.teacher_forcing", "model.label_smoothing", "model.dev_beam", "model.bf16",
    "model.max_length_a", "model.max_length_b", "model.length_penalty", "model.eval_context",
    "model.seq_len",
})

Writer = Callable[[Path], None]

# Files are created with the permissions the user's umask gives any new file (mkstemp's 0600
# would hide a shared run from other accounts).
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success flush it to disk and rename it onto
    ``path``, so a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_objects(directory: str | Path, objects: dict[str, Any]) -> None:
    """Write each object with its ``save(path)`` method to ``directory / name``, atomically
    (a task's artifacts: tokenizers, vocabularies)."""
    for name, obj in objects.items():
        with atomic_path(Path(directory) / name) as tmp:
            obj.save(tmp)


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        _dump_json(Path(tmp), data)


def _dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NlpseqError("file is missing; the run directory is damaged", path) from None
    except (OSError, ValueError) as err:
        raise NlpseqError(f"cannot read JSON: {err}", path) from None


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                   if line]
    except (OSError, ValueError) as err:
        raise NlpseqError(f"cannot read JSON lines: {err}", path) from None
    if not all(isinstance(record, dict) for record in records):
        raise NlpseqError("every line must be a JSON object", path)
    return records


def weights_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict as contiguous CPU copies, tied weights stored once."""
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in module.state_dict().items():
        if value.numel() > 0 and value.data_ptr() in seen:
            continue
        seen.add(value.data_ptr())
        state[key] = value.detach().cpu().clone().contiguous()
    return state


def save_weights(module: torch.nn.Module, path: str | Path) -> None:
    """State dict -> safetensors (tied weights stored once and re-tied on load)."""
    with atomic_path(path) as tmp:
        save_file(weights_state(module), tmp)


def load_weights(module: torch.nn.Module, path: str | Path) -> None:
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for damaged files
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


def optimizer_tensors(
    optimizer: torch.optim.Optimizer, extra: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state (plus ``extra`` trainer tensors: RNG, averaged weights, carried
    state) as (safetensors dict, the JSON-able rest)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for key, value in (extra or {}).items():
        tensors[f"extra/{key}"] = value.detach().cpu().clone().contiguous()
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().clone().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(
    optimizer: torch.optim.Optimizer, path: str | Path, rest: dict
) -> dict[str, torch.Tensor]:
    """Restore what :func:`optimizer_tensors` gave; returns the extra tensors."""
    try:
        return _load_optimizer(optimizer, path, rest)
    except NlpseqError:
        raise
    except Exception as err:  # safetensors' own errors, or a state that does not fit
        problem = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise NlpseqError(f"cannot restore the optimizer: {problem}", path) from None


def _load_optimizer(
    optimizer: torch.optim.Optimizer, path: str | Path, rest: dict
) -> dict[str, torch.Tensor]:
    tensors = load_file(str(path))
    extra = {
        k.removeprefix("extra/"): tensors.pop(k) for k in list(tensors) if k.startswith("extra/")
    }
    state: dict[int, dict[str, Any]] = {}
    for key, value in [*tensors.items(), *rest["scalars"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
    return extra


def tensors_writer(tensors: dict[str, torch.Tensor]) -> Writer:
    return lambda path: save_file(tensors, str(path))


def json_writer(data: Any) -> Writer:
    return lambda path: _dump_json(path, data)


def jsonl_writer(records: list[dict]) -> Writer:
    return lambda path: path.write_text("".join(json.dumps(r) + "\n" for r in records),
                                        encoding="utf-8")


def trained_with(config: PipelineConfig) -> dict[str, Any]:
    """The config values that shape the model, as dotted keys (see :data:`SHAPING`)."""
    flat = {"task": config.task}
    for section, values in config.to_dict().items():
        if isinstance(values, dict):
            flat.update({f"{section}.{name}": value for name, value in values.items()})
    return {k: v for k, v in flat.items()
            if k.startswith(SHAPING) and k not in NOT_SHAPING}


def check_trained_with(config: PipelineConfig, folder: Path, config_path: Path) -> None:
    """Refuse ``config`` when it differs from what the weights in ``folder`` were trained
    with, naming the first key that differs (runs without the record are not checked)."""
    record_path = folder / TRAINED_WITH
    if not record_path.is_file():
        return
    record = read_json(record_path)
    if not isinstance(record, dict):
        raise NlpseqError(f"{TRAINED_WITH} must be a JSON object", record_path)
    now = trained_with(config)
    for name, value in record.items():
        if name in now and now[name] != value:
            raise NlpseqError(
                f"{name} is {now[name]!r} but the weights were trained with {value!r}; "
                f"put it back (keys that shape the model cannot change after training)",
                config_path)


class RunDir:
    """A run directory's layout, its one-writer lock and its checkpoint commits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    def current(self) -> Path | None:
        """The committed checkpoint's folder, or None before the first commit."""
        pointer = self.path / POINTER
        if not pointer.is_file():
            return None
        record = read_json(pointer)
        name = record.get("checkpoint") if isinstance(record, dict) else None
        folder = self.path / CHECKPOINTS / str(name)
        if not isinstance(name, str) or not name.isdigit() or not folder.is_dir():
            raise NlpseqError(f"{POINTER} names no checkpoint folder; the run directory is "
                              "damaged", self.path)
        return folder

    def file(self, name: str) -> Path:
        """A file of the committed checkpoint (e.g. :data:`WEIGHTS`)."""
        folder = self.current()
        if folder is None:
            raise NlpseqError(f"not a checkpoint: {POINTER} is missing (no evaluation has "
                              "finished yet)", self.path)
        return folder / name

    def history(self) -> list[dict]:
        folder = self.current()
        return read_jsonl(folder / HISTORY) if folder else []

    def check_readable(self) -> Path:
        """The run directory, once it has a config and a committed checkpoint."""
        if not self.path.is_dir():
            raise NlpseqError("run directory not found", self.path)
        if not self.config.is_file():
            raise NlpseqError(f"not a checkpoint: {CONFIG} is missing", self.path)
        self.file(WEIGHTS)
        return self.path

    def check_writable(self) -> None:
        """Refuse an output folder that holds something other than an nlpseq run, before
        anything is written there."""
        if not self.path.exists():
            return
        if not self.path.is_dir():
            raise NlpseqError("--out must be a folder", self.path)
        # what a writer killed before its first file was in place leaves: the lock, temp files
        debris = {p for p in self.path.iterdir() if p.name == LOCK or _is_temp(p)}
        if set(self.path.iterdir()) - debris and not self.config.is_file():
            raise NlpseqError("folder is not empty and is not a run directory; choose a new "
                              "or empty folder for --out", self.path)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the run's lock (released on exit and when the process dies) and clean what
        a killed writer left behind."""
        from filelock import FileLock, Timeout

        self.path.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.path / LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise NlpseqError("another process is training into this run directory",
                              self.path) from None
        try:
            self.clean()
            yield
        finally:
            lock.release()

    def clean(self) -> None:
        """Remove temporary files and checkpoints that the commit point does not name."""
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        folders = self.path / CHECKPOINTS
        if not folders.is_dir():
            return
        keep = self.current()
        for folder in folders.iterdir():
            if folder != keep:
                shutil.rmtree(folder, ignore_errors=True)

    def commit(self, writers: dict[str, Writer], keep: tuple[str, ...] = ()) -> Path:
        """Write a new checkpoint: each file in ``writers`` written by its writer, each name in
        ``keep`` linked from the current checkpoint; then make it the current one."""
        previous = self.current()
        number = int(previous.name) + 1 if previous else 1
        folders = self.path / CHECKPOINTS
        folders.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folders, prefix=f".{number:06d}.", suffix=".tmp"))
        for name in keep:
            if previous is not None and (previous / name).exists():
                _link_or_copy(previous / name, staging / name)
        for name, write in writers.items():
            write(staging / name)
            os.chmod(staging / name, FILE_MODE)
            _fsync(staging / name)
        os.chmod(staging, 0o777 & ~_UMASK)
        _fsync(staging)
        final = folders / f"{number:06d}"
        os.replace(staging, final)
        _fsync(folders)
        write_json(self.path / POINTER, {"checkpoint": final.name})
        _fsync(self.path)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        return final


def _is_temp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # file systems without hard links
        shutil.copy2(source, target)


def check_run_dir(run_dir: str | Path) -> Path:
    """A run directory must hold at least the config and a committed checkpoint."""
    return RunDir(run_dir).check_readable()
