"""Hyperparameter search over any pipeline with Optuna: ``nlpseq tune``.

The search space is the pipeline's ``tune`` section (or a file of its own): dotted config keys
mapped to choices or ranges, each value checked by the same key declarations as the pipeline.
Each trial is an ordinary run directory ``STUDY_DIR/trial-NNNN`` trained by
:func:`nlpseq.trainer.train`; its dev metric at every evaluation feeds Optuna's pruner. The
study lives in an Optuna storage (SQLite inside the study folder by default), so a search
killed at any point continues with the same command, and several processes or machines can
share one study through a storage URL.

A trial whose process died is marked failed and queued again with the same settings; the new
trial continues from a copy of the dead one's last checkpoint. Death is seen two ways: each
process holds a lock file in ``STUDY_DIR/workers`` that the operating system releases when it
dies (seen at once by processes sharing the study folder), and Optuna's heartbeat (seen by
every process sharing the storage, after a grace period).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import difflib
import io
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from nlpseq import checkpoint as ckpt
from nlpseq.config import SECTIONS, PipelineConfig, config_from_dict, load_config, parse_overrides
from nlpseq.errors import NlpseqError
from nlpseq.runtime import log_stderr
from nlpseq.tasks import task_class

if TYPE_CHECKING:
    import optuna

Log = Callable[[str], None]

STUDY_DB = "study.db"
TRIALS_CSV = "trials.csv"
BEST = "best.yaml"
WORKERS = "workers"
ASK_LOCK = ".ask.lock"
HEARTBEAT_S = 60  # how often a running trial tells the storage it is alive
GRACE_S = 180  # a trial silent this long belongs to a dead process
MAX_RETRIES = 2  # a trial whose process died is queued again at most this often
MAX_FAILURES_IN_A_ROW = 3  # a search whose trials keep failing stops with the last error
PRUNERS = ("median", "halving", "none")
KINDS = ("uniform", "log_uniform", "int")
TUNE_KEYS = ("metric", "pruner", "random_trials", "prune_after", "space")
PLOTS = ("optimization_history", "param_importances", "parallel_coordinate",
         "intermediate_values")


# --- the search space ------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One searched key: ``choices`` or a ``uniform`` / ``log_uniform`` / ``int`` range."""

    key: str  # dotted config key, also the Optuna parameter name
    kind: Literal["choices", "uniform", "log_uniform", "int"]
    values: tuple[Any, ...]  # the choices, or (low, high)

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value for this key (a retried or enqueued trial's value is fixed)."""
        if self.kind == "choices":
            return trial.suggest_categorical(self.key, list(self.values))
        low, high = self.values
        if self.kind == "int":
            return trial.suggest_int(self.key, low, high)
        return trial.suggest_float(self.key, low, high, log=self.kind == "log_uniform")


@dataclass(frozen=True)
class TuneSpec:
    """The ``tune`` section: what to optimise, how to prune and where to search."""

    metric: str
    higher: bool  # from the task's metric table
    pruner: str = "median"
    random_trials: int = 10  # trials sampled at random before TPE models the space
    prune_after: int = 5  # completed trials before the median pruner compares
    space: tuple[Param, ...] = ()

    @property
    def direction(self) -> str:
        return "maximize" if self.higher else "minimize"


@dataclass(frozen=True)
class Search:
    """A pipeline ready to search: as written (``--set`` applied, ``tune`` removed), its
    validated configuration and its search space."""

    raw: dict[str, Any]
    path: str
    config: PipelineConfig
    spec: TuneSpec


def load_search(
    pipeline: str | Path, space_file: str | Path | None = None, overrides: Sequence[str] = ()
) -> Search:
    """Read ``pipeline`` and its ``tune`` section (or ``space_file``), validated: errors name
    the file and line of the faulty entry."""
    if any(item.strip().startswith("tune.") for item in overrides):
        raise NlpseqError("--set cannot change the tune section; edit it or use --space")
    config = load_config(pipeline, tuple(overrides))  # the pipeline's own errors first
    text = Path(pipeline).read_text(encoding="utf-8")
    raw = yaml.safe_load(text)
    where = str(pipeline)
    section, lines = raw.pop("tune", None), _tune_lines(text, True, where)
    if space_file is not None:  # the pipeline's own tune section, if any, is not used
        section, where, lines = _read_space_file(space_file)
    if section is None:
        raise NlpseqError("no tune section: add one or give --space FILE", pipeline)
    for name, values in parse_overrides(tuple(overrides)).items():
        raw[name] = {**(raw.get(name) or {}), **values}
    search = Search(raw, str(pipeline), config, TuneSpec("", True))
    spec = _parse_spec(section, search, where, lines, set(_override_keys(overrides)))
    return Search(raw, str(pipeline), config, spec)


def _read_space_file(path: str | Path) -> tuple[Any, str, dict[str, int]]:
    """The tune section of a ``--space`` file: its top level, or its ``tune`` key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        doc = yaml.safe_load(text)
    except FileNotFoundError:
        raise NlpseqError("--space file not found", path) from None
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise NlpseqError(f"cannot read the search space: {err}", path) from None
    nested = isinstance(doc, dict) and "tune" in doc
    return (doc["tune"] if nested else doc), str(path), _tune_lines(text, nested, str(path))


def _tune_lines(text: str, nested: bool, path: str) -> dict[str, int]:
    """1-based lines of ``tune``'s keys and of each ``space`` entry (``space.model.dropout``)."""
    lines: dict[str, int] = {}
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if nested and isinstance(node, yaml.MappingNode):
        found = [(k, v) for k, v in node.value if k.value == "tune"]
        if not found:
            return lines
        lines[""] = found[0][0].start_mark.line + 1
        node = found[0][1]
    if not isinstance(node, yaml.MappingNode):
        return lines
    for key_node, value_node in node.value:
        lines[str(key_node.value)] = key_node.start_mark.line + 1
        if key_node.value == "space" and isinstance(value_node, yaml.MappingNode):
            for entry, _ in value_node.value:
                name, line = f"space.{entry.value}", entry.start_mark.line + 1
                if name in lines:  # YAML loaders keep the last silently, hiding the first
                    raise NlpseqError(f"tune.{name} is written twice (first on line "
                                      f"{lines[name]})", path, line)
                lines[name] = line
    return lines


def _override_keys(overrides: Sequence[str]) -> list[str]:
    return [f"{s}.{k}" for s, values in parse_overrides(tuple(overrides)).items() for k in values]


def _parse_spec(section: Any, search: Search, path: str, lines: dict[str, int],
                overridden: set[str]) -> TuneSpec:
    """Validate the tune section's keys into a :class:`TuneSpec`."""
    if not isinstance(section, dict):
        raise NlpseqError("tune must be a mapping of metric, pruner, space, ...", path,
                          lines.get(""))
    for name in section:
        if name not in TUNE_KEYS:
            close = difflib.get_close_matches(str(name), TUNE_KEYS, n=1)
            hint = f"; did you mean tune.{close[0]}?" if close else f" ({', '.join(TUNE_KEYS)})"
            raise NlpseqError(f"unknown key tune.{name}{hint}", path, lines.get(str(name)))
    task = task_class(search.config.task)
    metric = section.get("metric") or search.config.eval.metric or task.default_metric
    if metric not in task.metrics:
        raise NlpseqError(f"tune.metric: {metric!r} is not one of {', '.join(task.metrics)}",
                          path, lines.get("metric"))
    pruner = section.get("pruner", "median")
    if pruner not in PRUNERS:
        raise NlpseqError(f"tune.pruner: {pruner!r} is not one of {', '.join(PRUNERS)}", path,
                          lines.get("pruner"))
    counts = {}
    for name, default in (("random_trials", 10), ("prune_after", 5)):
        value = section.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise NlpseqError(f"tune.{name}: expected an integer >= 0, got {value!r}", path,
                              lines.get(name))
        counts[name] = value
    space = section.get("space")
    if not isinstance(space, dict) or not space:
        raise NlpseqError("tune.space: expected a mapping of config keys to choices or ranges",
                          path, lines.get("space", lines.get("")))
    params = tuple(_parse_param(str(key), spec, search, path, lines.get(f"space.{key}"),
                                overridden) for key, spec in space.items())
    return TuneSpec(metric, task.metrics[metric], pruner, space=params, **counts)


def _parse_param(key: str, spec: Any, search: Search, path: str, line: int | None,
                 overridden: set[str]) -> Param:
    """One space entry, its values checked against the key's declaration."""
    section, dot, name = key.partition(".")
    if not dot or not name or (section not in SECTIONS and section != "model"):
        raise NlpseqError(f"tune.space: {key!r} is not a config key (section.key, sections "
                          f"{', '.join([*SECTIONS, 'model'])})", path, line)
    if key == "train.resume":
        raise NlpseqError("tune.space: train.resume is set by the search itself", path, line)
    if key in overridden:
        raise NlpseqError(f"tune.space: {key} is also given with --set", path, line)
    shape = ("expected a list of choices or one of {uniform: [lo, hi]}, "
             "{log_uniform: [lo, hi]}, {int: [lo, hi]}")
    if isinstance(spec, list):
        if not spec or any(isinstance(v, (list, dict)) for v in spec):
            raise NlpseqError(f"tune.space.{key}: {shape}", path, line)
        for value in spec:
            _check_value(search, key, value, path, line)
        return Param(key, "choices", tuple(spec))
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise NlpseqError(f"tune.space.{key}: {shape}", path, line)
    kind, bounds = next(iter(spec.items()))
    number = int if kind == "int" else (int, float)
    if (not isinstance(bounds, list) or len(bounds) != 2
            or any(isinstance(b, bool) or not isinstance(b, number) for b in bounds)):
        whole = "integers" if kind == "int" else "numbers"
        raise NlpseqError(f"tune.space.{key}: {kind} takes [lo, hi], two {whole}", path, line)
    low, high = bounds
    if not low < high or (kind == "log_uniform" and low <= 0):
        needs = "0 < lo < hi" if kind == "log_uniform" else "lo < hi"
        raise NlpseqError(f"tune.space.{key}: {kind} needs {needs}, got [{low}, {high}]",
                          path, line)
    if kind != "int":  # a float range needs a float key: try a value between the bounds
        low, high = float(low), float(high)
        _check_value(search, key, (low + high) / 2, path, line, kind)
    for value in (low, high):
        _check_value(search, key, value, path, line)
    return Param(key, kind, (low, high))


def _check_value(search: Search, key: str, value: Any, path: str, line: int | None,
                 kind: str = "") -> None:
    """Validate the pipeline with ``key`` set to ``value``: the key's own declaration decides
    (unknown, of another task, wrong type, out of range, in conflict with another key)."""
    try:
        trial_config(search, {key: value})
    except NlpseqError as err:
        hint = " (an integer key: use {int: [lo, hi]} or choices)" if (
            kind and "expected an integer" in err.message) else ""
        raise NlpseqError(f"tune.space: {err.message}{hint}", path, line) from None


def trial_config(search: Search, params: dict[str, Any], max_minutes: float | None = None,
                 resume: bool = False) -> PipelineConfig:
    """The configuration a trial trains: the pipeline with ``params`` and the search's
    settings (budget, resume, selection on the searched metric)."""
    return config_from_dict(_trial_raw(search, params, max_minutes, resume), search.path)


def _trial_raw(search: Search, params: dict[str, Any], max_minutes: float | None,
               resume: bool | None) -> dict[str, Any]:
    raw = copy.deepcopy(search.raw)
    settings = dict(params)
    if search.spec.metric:
        settings["eval.metric"] = search.spec.metric
    if max_minutes is not None:
        settings["train.max_minutes"] = max_minutes
    if resume is not None:
        settings["train.resume"] = resume
    for key, value in settings.items():
        section, _, name = key.partition(".")
        raw[section] = {**(raw.get(section) or {}), name: value}
    return raw


# --- time ---------------------------------------------------------------------------------------
class SearchClock:
    """The search's wall-clock budget (``--minutes``) against each trial's (``--trial-minutes``,
    else the pipeline's ``train.max_minutes``; 0 = none)."""

    def __init__(self, minutes: float | None, trial_minutes: float,
                 now: Callable[[], float] = time.monotonic):
        self.now = now
        self.deadline = now() + minutes * 60 if minutes else math.inf
        self.trial_minutes = trial_minutes

    def next_trial(self) -> float | None:
        """Minutes the next trial may train (0 = no limit), or None when it would not fit."""
        if self.deadline == math.inf:
            return self.trial_minutes
        left = (self.deadline - self.now()) / 60
        if left <= 0 or left < self.trial_minutes:
            return None
        return min(self.trial_minutes, left) if self.trial_minutes else left


# --- the search ---------------------------------------------------------------------------------
def tune(
    pipeline: str | Path,
    out_dir: str | Path,
    trials: int | None = None,
    minutes: float | None = None,
    storage: str | None = None,
    overrides: Sequence[str] = (),
    *,
    trial_minutes: float | None = None,
    space: str | Path | None = None,
    seed: int | None = None,
    study_name: str | None = None,
    log: Log = log_stderr,
    quiet: bool = False,
) -> optuna.Study:
    """Search ``pipeline``'s ``tune.space`` (or ``space``'s) with Optuna's TPE sampler and
    pruner until ``trials`` trials of the study have completed or been pruned (counting
    earlier runs and other processes) or ``minutes`` have passed; returns the study.

    Every trial trains into ``out_dir/trial-NNNN``; ``trials.csv``, ``best.yaml`` (a pipeline
    ``nlpseq train`` accepts) and plots are written to ``out_dir``. ``storage`` is an Optuna
    storage URL (default: SQLite in ``out_dir``); ``seed`` seeds the sampler (default: the
    pipeline's ``train.seed``); ``quiet`` keeps only one line per trial from the log."""
    require_optuna()
    search = load_search(pipeline, space, overrides)
    clock = SearchClock(minutes, trial_minutes or search.config.train.max_minutes)
    out = _study_dir(out_dir)
    with _optuna_quiet(), _Worker(out) as worker:
        with worker.ask_lock:  # one process at a time creates the tables and the study
            study = open_study(search, out, storage, study_name or Path(pipeline).stem)
        runner = _Runner(search, study, out, worker, clock, log, quiet)
        seed = search.config.train.seed if seed is None else seed
        try:
            runner.run(trials, seed)
        finally:
            write_results(study, search, out, log)
    return study


def require_optuna() -> None:
    """Raise a one-line NlpseqError saying how to install Optuna when it is missing."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise NlpseqError("nlpseq tune needs Optuna: pip install 'nlpseq[tune]'") from None


def _study_dir(out_dir: str | Path) -> Path:
    """The study folder, created; a run directory is refused (a study holds runs)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NlpseqError("--out must be a folder", out)
    if (out / ckpt.CONFIG).exists():
        raise NlpseqError("--out is a run directory; a study needs a folder of its own", out)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's per-trial info lines and experimental-feature warnings off: the search logs
    its own lines."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", message=".*step .* is already reported")
            yield
    finally:
        optuna.logging.set_verbosity(before)


class _Worker:
    """This process's identity in the study, and the lock file that shows it alive."""

    def __init__(self, out: Path):
        from filelock import FileLock

        self.id = uuid.uuid4().hex[:12]
        self.folder = out / WORKERS
        self.lock = FileLock(str(self.folder / f"{self.id}.lock"), timeout=0)
        self.ask_lock = FileLock(str(out / ASK_LOCK))

    def __enter__(self) -> _Worker:
        self.folder.mkdir(exist_ok=True)
        self.lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        Path(self.lock.lock_file).unlink(missing_ok=True)

    def dead_workers(self) -> Iterator[str]:
        """Ids of workers of this folder whose process has died (lock file free); each one's
        file is removed once the caller has dealt with it."""
        from filelock import FileLock, Timeout

        for path in sorted(self.folder.glob("*.lock")):
            if path.stem == self.id:
                continue
            lock = FileLock(str(path), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                continue  # alive
            try:
                yield path.stem
            finally:
                lock.release()
                path.unlink(missing_ok=True)


def _retry() -> Callable[..., None]:
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES,
                                            inherit_intermediate_values=True)


def open_storage(url: str | None, out: Path) -> optuna.storages.RDBStorage:
    """The study's storage: ``url`` or SQLite in ``out``, with heartbeats, so that a trial
    whose process died is marked failed and queued again."""
    import optuna
    import sqlalchemy.exc

    url = url or f"sqlite:///{(out / STUDY_DB).resolve()}"
    # SQLite shared by processes: wait for the writer instead of failing after 5 s
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else None
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=_retry())
    except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise NlpseqError(f"--storage {url}: {str(err).splitlines()[0]}") from None


def open_study(search: Search, out: Path, storage: str | None, name: str) -> optuna.Study:
    """Create or load the study ``name``; one already there must optimise the same metric."""
    import optuna

    study = optuna.create_study(storage=open_storage(storage, out), study_name=name,
                                direction=search.spec.direction, load_if_exists=True,
                                pruner=make_pruner(search.spec))
    recorded = study.user_attrs.get("metric")
    if recorded is None:
        study.set_user_attr("metric", search.spec.metric)
        study.set_user_attr("task", search.config.task)
    elif recorded != search.spec.metric or study.direction.name.lower() != search.spec.direction:
        raise NlpseqError(f"study {name!r} optimises {recorded}, not {search.spec.metric}; "
                          "choose another --out, --storage or --study-name", out)
    return study


def make_pruner(spec: TuneSpec) -> optuna.pruners.BasePruner:
    import optuna

    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.prune_after)
    if spec.pruner == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


class _Runner:
    """Starts trials one at a time until the study has enough or the time is up."""

    def __init__(self, search: Search, study: optuna.Study, out: Path, worker: _Worker,
                 clock: SearchClock, log: Log, quiet: bool):
        self.search, self.study, self.out, self.worker = search, study, out, worker
        self.clock, self.log, self.quiet = clock, log, quiet
        self.minutes = 0.0  # the running trial's budget
        self.current: int | None = None  # the running trial's number
        self.failures = 0  # trials failed in a row in this process
        self.last_error = ""

    def run(self, trials: int | None, seed: int) -> None:
        """Start trials while the study has fewer than ``trials`` completed, pruned and
        running ones, and the clock allows."""
        import optuna

        while True:
            # Counting and asking for the next trial under one lock keeps processes sharing
            # the study folder from both starting trial N+1; the trial releases the lock.
            self.worker.ask_lock.acquire()
            self.current = None
            try:
                self._fail_dead_trials()
                self.minutes = self._next_budget(trials)
                if self.minutes is None:
                    return
                # The sampler's seed follows the trial number, so restarts and parallel
                # processes do not repeat each other's random trials.
                self.study.sampler = optuna.samplers.TPESampler(
                    seed=seed + len(self.study.get_trials(deepcopy=False)),
                    n_startup_trials=self.search.spec.random_trials)
                self.study.optimize(self._objective, n_trials=1, callbacks=[self._finished])
            except KeyboardInterrupt:
                self._queue_again(self.current)
                raise
            finally:
                self.worker.ask_lock.release()  # a no-op once the trial has released it

    def _next_budget(self, trials: int | None) -> float | None:
        from optuna.trial import TrialState

        if self.failures >= MAX_FAILURES_IN_A_ROW:
            raise NlpseqError(f"{self.failures} trials in a row failed; the last: "
                              f"{self.last_error}")
        states = [t.state for t in self.study.get_trials(deepcopy=False)]
        counted = sum(s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
                      for s in states)
        if trials is not None and counted >= trials:
            return None
        return self.clock.next_trial()

    def _fail_dead_trials(self) -> None:
        """Mark failed (and queue again) the running trials of dead workers: those of this
        folder at once, the others once their heartbeat is older than the grace period."""
        import optuna
        from optuna.trial import TrialState

        optuna.storages.fail_stale_trials(self.study)
        for worker in self.worker.dead_workers():
            for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if trial.user_attrs.get("worker") != worker:
                    continue
                try:
                    frozen = self.study.tell(trial.number, state=TrialState.FAIL)
                except RuntimeError:
                    continue  # another process got there first
                self.log(f"trial {trial.number}: its process died; marked failed")
                _retry()(self.study, frozen)

    def _queue_again(self, number: int | None) -> None:
        """After Ctrl-C: the interrupted trial, marked failed by Optuna, is queued again so
        that the same command continues it from its last checkpoint."""
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        if number is None or number >= len(trials):
            return
        trial = trials[number]
        if trial.state == TrialState.FAIL and "error" not in trial.user_attrs:
            _retry()(self.study, trial)

    def _objective(self, trial: optuna.Trial) -> float:
        from nlpseq.trainer import train

        self.current = trial.number
        trial.set_user_attr("worker", self.worker.id)
        run_dir = self.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", run_dir.name)
        trial.set_user_attr("max_minutes", self.minutes)
        params = {p.key: p.suggest(trial) for p in self.search.spec.space}
        resumed = _take_over(trial, self.out, run_dir)
        self.worker.ask_lock.release()
        self.log(f"trial {trial.number}: {_params_text(params)}"
                 + (f" (continues trial {resumed})" if resumed is not None else ""))
        metric = self.search.spec.metric
        try:
            config = trial_config(self.search, params, self.minutes, resumed is not None)
            result = train(config, run_dir, progress=False,
                           log=_silent if self.quiet else _prefixed(self.log, trial.number),
                           on_evaluation=lambda record: _report(trial, metric, record))
        except Exception as err:
            if not _trial_error(err):
                raise
            trial.set_user_attr("error", str(err))
            return math.nan  # Optuna records the trial as failed
        return float(result.metrics["dev"][metric])

    def _finished(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Log the trial's end and refresh trials.csv and best.yaml."""
        from optuna.trial import TrialState

        error = trial.user_attrs.get("error", "")
        self.failures = self.failures + 1 if trial.state == TrialState.FAIL else 0
        self.last_error = error or self.last_error
        value = "" if trial.value is None else f" {self.search.spec.metric} {trial.value:.4f}"
        why = f": {error}" if error else (
            f" at step {trial.last_step}" if trial.state == TrialState.PRUNED else "")
        self.log(f"trial {trial.number} {trial.state.name.lower()}{value}{why} "
                 f"({_minutes(trial):.1f} min)")
        write_tables(study, self.search, self.out)


def _take_over(trial: optuna.Trial, out: Path, run_dir: Path) -> int | None:
    """For a trial queued again after its process died: copy the dead trial's run directory
    (hard links; files are never changed in place) so training continues from its last
    checkpoint. Returns the dead trial's number, or None when there is nothing to continue."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    frozen = trial.study.get_trials(deepcopy=False)[trial.number]
    history = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    if not history:
        return None
    previous = out / f"trial-{history[-1]:04d}"
    if ckpt.RunDir(previous).current() is None or run_dir.exists():
        return None
    shutil.copytree(previous, run_dir, copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns(ckpt.LOCK, ".*.tmp", "curves.png"))
    return history[-1]


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # file systems without hard links
        shutil.copy2(source, target)


def _report(trial: optuna.Trial, metric: str, record: dict[str, Any]) -> None:
    """Give the pruner the evaluation's dev metric; stop the trial when it says so."""
    import optuna

    trial.report(float(record[metric]), step=int(record["step"]))
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {record['step']}")


def _trial_error(err: Exception) -> bool:
    """Whether ``err`` ends only its trial (bad settings, divergence, out of memory) rather
    than the search."""
    import torch

    return isinstance(err, (NlpseqError, torch.cuda.OutOfMemoryError))


def _silent(_message: str) -> None:
    pass


def _prefixed(log: Log, number: int) -> Log:
    return lambda message: log(f"  trial {number}: {message}")


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_number_text(v)}" for k, v in params.items())


def _number_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _minutes(trial: optuna.trial.FrozenTrial) -> float:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    return (trial.datetime_complete - trial.datetime_start).total_seconds() / 60


# --- results ------------------------------------------------------------------------------------
def write_results(study: optuna.Study, search: Search, out: Path, log: Log) -> None:
    """trials.csv, best.yaml, the table of trials on the log and the plots."""
    rows = write_tables(study, search, out)
    best = best_trial(study)
    log(format_table(rows, None if best is None else best.number))
    for note in write_plots(study, out):
        log(f"note: {note}")


def trial_rows(study: optuna.Study, search: Search) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, each searched key, run dir, minutes, note."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    keys = [p.key for p in search.spec.space]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        retried = RetryHeartbeatStaleTrialCallback.retry_history(trial)
        note = trial.user_attrs.get("error", "")
        if trial.state == TrialState.FAIL and not note:
            note = "its process stopped while it trained"
        if trial.state == TrialState.PRUNED:
            note = f"pruned at step {trial.last_step}"
        elif retried:
            note = f"again after trial {retried[-1]} died" + (f"; {note}" if note else "")
        rows.append({
            "number": trial.number, "state": trial.state.name,
            "value": "" if trial.value is None else trial.value,
            **{k: trial.params.get(k, "") for k in keys},
            "run_dir": trial.user_attrs.get("run_dir", ""),
            "minutes": round(_minutes(trial), 2), "note": note,
        })
    return rows


def write_tables(study: optuna.Study, search: Search, out: Path) -> list[dict[str, Any]]:
    """trials.csv and, once a trial has completed, best.yaml; returns the rows."""
    rows = trial_rows(study, search)
    text = io.StringIO()
    columns = ["number", "state", "value", *(p.key for p in search.spec.space), "run_dir",
               "minutes", "note"]
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with ckpt.atomic_path(out / TRIALS_CSV) as tmp:
        Path(tmp).write_text(text.getvalue(), encoding="utf-8")
    best = best_trial(study)
    if best is not None:
        write_best(best, search, out / BEST)
    return rows


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's best completed trial, or None before the first one."""
    try:
        return study.best_trial
    except ValueError:
        return None


def write_best(trial: optuna.trial.FrozenTrial, search: Search, path: Path) -> None:
    """The best trial's configuration as a whole pipeline: the searched pipeline with the
    trial's values and budget; ``nlpseq train`` reproduces the trial from it."""
    minutes = trial.user_attrs.get("max_minutes") or None  # 0: the pipeline's own (none)
    raw = _trial_raw(search, dict(trial.params), minutes, None)
    config_from_dict(copy.deepcopy(raw), str(path))  # what nlpseq train will check
    values = ", ".join(f"{k}={_number_text(v)}" for k, v in trial.params.items())
    header = (f"# Best trial of `nlpseq tune {search.path}`: trial {trial.number} "
              f"({trial.user_attrs.get('run_dir', '')}), dev {search.spec.metric} "
              f"{trial.value:.4f}\n# with {values}.\n")
    if minutes:
        header += (f"# train.max_minutes is the trial's budget ({minutes:g}); raise it to "
                   "train longer.\n")
    with ckpt.atomic_path(path) as tmp:
        Path(tmp).write_text(header + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def format_table(rows: list[dict[str, Any]], best: int | None) -> str:
    """The trials as an aligned text table, the best one starred."""
    if not rows:
        return "no trials"
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    for row, line in zip(rows, cells):
        mark = "* " if row["number"] == best else "  "
        lines.append(mark + "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return _number_text(value) if isinstance(value, float) else str(value)


def write_plots(study: optuna.Study, out: Path) -> list[str]:
    """PNGs of the search through optuna.visualization.matplotlib; returns notes on the plots
    left out (no matplotlib, too few trials)."""
    from optuna.trial import TrialState

    try:
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as views
    except ImportError:
        return ["no plots: matplotlib is not installed (pip install 'nlpseq[plot]')"]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return ["no plots yet: no trial has completed"]
    varied = {k for k in {k for t in complete for k in t.params}
              if len({repr(t.params.get(k)) for t in complete}) > 1}
    wanted = {
        "optimization_history": (views.plot_optimization_history, True),
        "param_importances": (views.plot_param_importances, len(complete) >= 2 and varied),
        "parallel_coordinate": (views.plot_parallel_coordinate, True),
        "intermediate_values": (views.plot_intermediate_values, True),
    }
    notes = []
    for name, (draw, possible) in wanted.items():
        if not possible:
            notes.append(f"no {name}.png yet: it needs two completed trials that differ")
            continue
        try:
            with warnings.catch_warnings():  # matplotlib's notes on flat axes and the like
                warnings.simplefilter("ignore")
                axes = draw(study)
            figure = getattr(axes, "flat", [axes])[0].figure
            with ckpt.atomic_path(out / f"{name}.png") as tmp:
                figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            plt.close(figure)
        except (ValueError, RuntimeError, ImportError, OSError) as err:
            notes.append(f"no {name}.png: {err}")
    return notes
