"""nlpseq tune: the search space checked like every other key, trials as run directories with
a table and a best pipeline that trains, pruning, a search killed mid-trial and continued by
the same command, two processes sharing one study."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from helpers import assert_one_line_error, invoke, write_pipeline
from optuna.trial import TrialState

import nlpseq
from nlpseq import checkpoint as ckpt
from nlpseq.config import load_config
from nlpseq.tuning import SearchClock

NLPSEQ = Path(sys.executable).parent / "nlpseq"
SPACE = {"train.lr": {"log_uniform": [1.0e-4, 0.1]}, "model.hidden_size": [4, 8]}


def tune_pipeline(directory: Path, corpus: dict[str, Path], tune: Any,
                  settings: dict[str, Any] | None = None) -> Path:
    """The tiny sentiment pipeline with ``tune`` as its tune section."""
    path = write_pipeline(directory, "sentiment", corpus, settings)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw["tune"] = tune
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def read_rows(study_dir: Path) -> list[dict[str, str]]:
    with open(study_dir / "trials.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def dev_value(run_dir: Path, metric: str = "accuracy") -> float:
    return ckpt.read_json(ckpt.RunDir(run_dir).file(ckpt.METRICS))["dev"][metric]


def load(study_dir: Path, name: str = "sentiment") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.db'}")


def test_three_trials_give_run_directories_a_table_and_a_best_pipeline(tmp_path, corpus):
    pipeline = tune_pipeline(tmp_path, corpus, {"space": SPACE}, {"train.epochs": 3})
    study_dir = tmp_path / "study"
    result = invoke("tune", pipeline, "--out", study_dir, "--trials", 3, "--quiet", check=True)
    rows = read_rows(study_dir)
    assert [(r["number"], r["state"], r["run_dir"]) for r in rows] == [
        (str(n), "COMPLETE", f"trial-{n:04d}") for n in range(3)]
    for row in rows:  # each row is its run directory: value and settings
        run_dir = study_dir / row["run_dir"]
        assert float(row["value"]) == dev_value(run_dir)
        config = load_config(run_dir / ckpt.CONFIG)
        assert (config.train.lr, config.model.hidden_size) == (
            float(row["train.lr"]), int(row["model.hidden_size"]))
    best = json.loads(result.stdout)
    values = [float(r["value"]) for r in rows]
    assert best["value"] == max(values) == values[best["trial"]]
    starred = [line for line in result.stderr.splitlines() if line.startswith("* ")]
    assert starred and starred[0].split()[1] == str(best["trial"])
    written = yaml.safe_load((study_dir / "best.yaml").read_text(encoding="utf-8"))
    assert "tune" not in written
    assert (written["train"]["lr"], written["model"]["hidden_size"]) == (
        best["params"]["train.lr"], best["params"]["model.hidden_size"])
    trained = invoke("train", study_dir / "best.yaml", "--out", tmp_path / "best", "--quiet",
                     check=True)
    assert json.loads(trained.stdout)["accuracy"] == best["value"]  # the trial, reproduced
    pytest.importorskip("matplotlib")
    for name in ("optimization_history", "param_importances", "parallel_coordinate",
                 "intermediate_values"):
        assert (study_dir / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_train_ignores_the_tune_section(tmp_path, corpus):
    pipeline = tune_pipeline(tmp_path, corpus, {"space": SPACE}, {"train.epochs": 1})
    invoke("train", pipeline, "--out", tmp_path / "run", "--quiet", check=True)
    assert "tune" not in yaml.safe_load((tmp_path / "run" / ckpt.CONFIG).read_text())


def test_a_poor_trial_is_pruned_and_recorded_as_pruned(tmp_path, corpus):
    """Trial 0 (a good learning rate) completes; trial 1 (a learning rate that learns nothing)
    falls below it at an evaluation and stops there, a valid run directory."""
    pipeline = tune_pipeline(tmp_path, corpus, {
        "space": {"train.lr": {"log_uniform": [1.0e-7, 0.1]}}, "prune_after": 1})
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    queued = optuna.create_study(storage=f"sqlite:///{study_dir / 'study.db'}",
                                 study_name="sentiment", direction="maximize")
    queued.enqueue_trial({"train.lr": 0.05})
    queued.enqueue_trial({"train.lr": 1.0e-7})
    lines: list[str] = []
    study = nlpseq.tune(pipeline, study_dir, trials=2, log=lines.append)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    history = ckpt.RunDir(study_dir / "trial-0001").history()
    assert len(history) < 6  # stopped before its last epoch
    last = history[-1]["step"]
    assert study.trials[1].last_step == last
    assert study.trials[1].value == history[-1]["accuracy"]
    assert read_rows(study_dir)[1]["state"] == "PRUNED"
    assert read_rows(study_dir)[1]["note"] == f"pruned at step {last}"
    assert f"trial 1 pruned accuracy {history[-1]['accuracy']:.4f} at step {last} (" in (
        "\n".join(lines))


def _start(*args: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(NLPSEQ), *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    started = time.monotonic()
    while not path.exists():
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        assert time.monotonic() - started < timeout, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.heavy
def test_a_search_killed_mid_trial_continues_with_the_same_command(tmp_path, corpus):
    """SIGKILL while trial 1 trains; the same command marks it failed, runs it again from its
    last checkpoint (as trial 2) and completes three trials."""
    pipeline = write_pipeline(tmp_path, "sentiment", corpus, {"train.epochs": 30})
    space = tmp_path / "space.yaml"  # the search space in a file of its own
    space.write_text(yaml.safe_dump({"space": SPACE}), encoding="utf-8")
    study_dir = tmp_path / "study"
    command = ("tune", pipeline, "--out", study_dir, "--trials", 3, "--space", space, "--quiet")
    process = _start(*command)
    _wait_for(study_dir / "trial-0001" / ckpt.POINTER, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [t.state for t in load(study_dir).trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    killed = ckpt.RunDir(study_dir / "trial-0001").history()
    invoke(*command, check=True)
    trials = load(study_dir).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[2].params == trials[1].params
    again = ckpt.RunDir(study_dir / "trial-0002").history()
    assert again[: len(killed)] == killed  # continued from the checkpoint, not restarted
    assert [r["epoch"] for r in again] == list(range(1, 31))
    rows = read_rows(study_dir)
    assert rows[2]["note"] == "again after trial 1 died"
    assert not list((study_dir / "workers").iterdir())  # no worker left behind


@pytest.mark.heavy
def test_a_trial_of_a_dead_machine_is_failed_by_its_heartbeat_and_run_again(
        tmp_path, corpus, monkeypatch):
    """Two study folders share one storage, as machines do: a process of the other folder dies
    mid-trial; once its heartbeat is older than the grace period, this one marks the trial
    failed and runs it again from the start (its run directory is elsewhere)."""
    import nlpseq.tuning

    pipeline = tune_pipeline(tmp_path, corpus, {"space": SPACE}, {"train.epochs": 30})
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    elsewhere = _start("tune", pipeline, "--out", tmp_path / "a", "--storage", storage,
                       "--trials", 2, "--quiet")
    _wait_for(tmp_path / "a" / "trial-0000" / ckpt.POINTER, elsewhere)
    elsewhere.send_signal(signal.SIGKILL)
    elsewhere.wait()
    monkeypatch.setattr(nlpseq.tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(nlpseq.tuning, "GRACE_S", 2)
    time.sleep(3)  # the dead trial's last heartbeat is older than the grace period
    study = nlpseq.tune(pipeline, tmp_path / "b", trials=2, storage=storage,
                        log=lambda _m: None)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE,
                                               TrialState.COMPLETE]
    assert study.trials[1].params == study.trials[0].params
    assert [r["epoch"] for r in ckpt.RunDir(tmp_path / "b" / "trial-0001").history()] == list(
        range(1, 31))  # trained from the start
    assert read_rows(tmp_path / "b")[1]["note"] == "again after trial 0 died"


@pytest.mark.heavy
def test_two_processes_share_one_study_without_repeating_a_trial(tmp_path, corpus):
    pipeline = tune_pipeline(tmp_path, corpus, {"space": SPACE}, {"train.epochs": 20})
    study_dir = tmp_path / "study"
    command = ("tune", pipeline, "--out", study_dir, "--trials", 4, "--quiet")
    first = _start(*command)
    _wait_for(study_dir / "trial-0000", first)  # the second joins while trial 0 trains
    second = _start(*command)
    for process in (first, second):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    trials = load(study_dir).trials
    assert [(t.number, t.state) for t in trials] == [(n, TrialState.COMPLETE) for n in range(4)]
    assert sorted(t.user_attrs["run_dir"] for t in trials) == [f"trial-{n:04d}" for n in range(4)]
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    for trial in trials:
        assert dev_value(study_dir / trial.user_attrs["run_dir"]) == trial.value


def test_ctrl_c_queues_the_interrupted_trial_which_the_next_search_continues(
        tmp_path, corpus, monkeypatch):
    import nlpseq.tuning

    pipeline = tune_pipeline(tmp_path, corpus, {"space": SPACE})
    report = nlpseq.tuning._report

    def interrupt(trial, metric, record):
        if record["epoch"] == 3:
            raise KeyboardInterrupt
        report(trial, metric, record)

    monkeypatch.setattr(nlpseq.tuning, "_report", interrupt)
    with pytest.raises(KeyboardInterrupt):
        nlpseq.tune(pipeline, tmp_path / "study", trials=1, log=lambda _m: None)
    trials = load(tmp_path / "study").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == trials[0].params
    monkeypatch.setattr(nlpseq.tuning, "_report", report)
    study = nlpseq.tune(pipeline, tmp_path / "study", trials=1, log=lambda _m: None)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    interrupted = ckpt.RunDir(tmp_path / "study" / "trial-0000").history()
    assert [r["epoch"] for r in interrupted] == [1, 2, 3]
    continued = ckpt.RunDir(tmp_path / "study" / "trial-0001").history()
    assert continued[:3] == interrupted and [r["epoch"] for r in continued] == list(range(1, 7))


def test_the_shipped_search_space_fits_its_pipeline():
    from nlpseq.tuning import load_search

    root = Path(__file__).resolve().parent.parent
    search = load_search(root / "pipelines/chargen-shakespeare.yaml",
                         root / "pipelines/tune/chargen-shakespeare.yaml")
    assert (search.spec.metric, search.spec.direction) == ("loss", "minimize")
    assert [p.key for p in search.spec.space] == ["model.hidden_size", "model.dropout",
                                                  "train.lr"]


def test_a_search_whose_trials_keep_failing_stops_with_the_error(tmp_path, corpus):
    """Each value is valid alone, the two together are not: every trial fails before
    training, and the search stops after three in a row."""
    pipeline = tune_pipeline(tmp_path, corpus, {"space": {
        "train.optimizer": ["sgd"], "embeddings.lazy_updates": [True]}})
    result = invoke("tune", pipeline, "--out", tmp_path / "study", "--trials", 5)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: 3 trials in a row failed; the last: {pipeline}: embeddings.lazy_updates "
        "needs train.optimizer adam or adamw, not sgd")
    rows = read_rows(tmp_path / "study")
    assert [r["state"] for r in rows] == ["FAIL"] * 3
    assert all("lazy_updates needs" in r["note"] for r in rows)
    assert not (tmp_path / "study" / "best.yaml").exists()


# --- the search space, checked like every key ------------------------------------------------
BAD_SPACES = [
    ({"space": {"model.hiden_size": [4, 8]}}, "model.hiden_size",
     "tune.space: unknown key model.hiden_size; did you mean model.hidden_size?"),
    ({"space": {"data.tag_scheme": ["iob2"]}}, "data.tag_scheme",
     "tune.space: data.tag_scheme: does not apply to the sentiment task (only ner)"),
    ({"space": {"model.dropout": {"uniform": [0.1, 1.5]}}}, "model.dropout",
     "tune.space: model.dropout: must be in [0, 1), got 1.5"),
    ({"space": {"train.lr": {"normal": [0, 1]}}}, "train.lr",
     "tune.space.train.lr: expected a list of choices or one of"),
    ({"space": {"train.lr": {"log_uniform": [0, 0.1]}}}, "train.lr",
     "tune.space.train.lr: log_uniform needs 0 < lo < hi, got [0, 0.1]"),
    ({"space": {"model.hidden_size": {"uniform": [4, 64]}}}, "model.hidden_size",
     "tune.space: model.hidden_size: expected an integer, got 34.0 (an integer key: use "
     "{int: [lo, hi]} or choices)"),
    ({"space": {"model.hidden_size": {"int": [4, 8.5]}}}, "model.hidden_size",
     "tune.space.model.hidden_size: int takes [lo, hi], two integers"),
    ({"space": {"train.optimizer": ["adam", "sgd"]}}, "train.optimizer",
     "tune.space: embeddings.lazy_updates needs train.optimizer adam or adamw, not sgd"),
    ({"metrc": "accuracy", "space": SPACE}, "metrc",
     "unknown key tune.metrc; did you mean tune.metric?"),
    ({"metric": "bleu", "space": SPACE}, "metric",
     "tune.metric: 'bleu' is not one of accuracy, macro_f1, loss"),
    ({"pruner": "hyperband", "space": SPACE}, "pruner",
     "tune.pruner: 'hyperband' is not one of median, halving, none"),
]


@pytest.mark.parametrize(("tune", "key", "message"), BAD_SPACES,
                         ids=[case[1] + "-" + str(i) for i, case in enumerate(BAD_SPACES)])
def test_a_bad_search_space_names_its_file_and_line(tmp_path, corpus, tune, key, message):
    pipeline = tune_pipeline(tmp_path, corpus, tune, {"embeddings.lazy_updates": True})
    lines = pipeline.read_text(encoding="utf-8").splitlines()
    line = 1 + next(i for i, text in enumerate(lines) if text.strip().startswith(f"{key}:")
                    and i > lines.index("tune:"))
    result = invoke("tune", pipeline, "--out", tmp_path / "study", "--trials", 1)
    assert_one_line_error(result, f"{pipeline}:{line}: {message}")
    assert not (tmp_path / "study").exists()  # refused before anything was written


def test_a_space_file_error_names_the_space_file(tmp_path, corpus):
    pipeline = write_pipeline(tmp_path, "sentiment", corpus)
    space = tmp_path / "space.yaml"
    space.write_text("pruner: median\nspace:\n  train.lr: [0.01]\n  model.dropout: [2]\n",
                     encoding="utf-8")
    result = invoke("tune", pipeline, "--out", tmp_path / "study", "--space", space)
    assert_one_line_error(result, f"{space}:4: tune.space: model.dropout: must be in [0, 1)")
    space.write_text("space:\n  train.lr: [0.01]\n  train.lr: [0.02]\n", encoding="utf-8")
    twice = invoke("tune", pipeline, "--out", tmp_path / "study", "--space", space)
    assert_one_line_error(twice, f"{space}:3: tune.space.train.lr is written twice (first on "
                                 "line 2)")
    no_section = invoke("tune", pipeline, "--out", tmp_path / "study")
    assert_one_line_error(no_section, f"{pipeline}: no tune section")


def test_set_and_the_space_cannot_both_choose_a_key(tmp_path, corpus):
    pipeline = tune_pipeline(tmp_path, corpus, {"space": SPACE})
    result = invoke("tune", pipeline, "--out", tmp_path / "s", "--set", "train.lr=0.01")
    assert_one_line_error(result, "tune.space: train.lr is also given with --set")


def test_no_trial_starts_when_the_search_is_shorter_than_a_trial(tmp_path, corpus):
    pipeline = tune_pipeline(tmp_path, corpus, {"space": SPACE})
    result = invoke("tune", pipeline, "--out", tmp_path / "study", "--minutes", 1,
                    "--trial-minutes", 5, check=True)
    assert result.stdout == "" and "no trials" in result.stderr
    assert read_rows(tmp_path / "study") == []


def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path, corpus):
    pipeline = tune_pipeline(tmp_path, corpus, {"space": SPACE})
    result = invoke("tune", pipeline, "--out", tmp_path / "study", "--storage", "nosuch://db")
    assert_one_line_error(result, "--storage nosuch://db: ")


def test_without_optuna_the_command_says_how_to_install_it(tmp_path, corpus, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    result = invoke("tune", tune_pipeline(tmp_path, corpus, {"space": SPACE}), "--out",
                    tmp_path / "study")
    assert_one_line_error(result, "error: nlpseq tune needs Optuna: pip install 'nlpseq[tune]'")


def test_the_clock_starts_no_trial_that_would_not_fit():
    now = [0.0]
    clock = SearchClock(10, 4, now=lambda: now[0])
    assert clock.next_trial() == 4
    now[0] = 6 * 60  # 4 minutes left: one more 4-minute trial
    assert clock.next_trial() == 4
    now[0] = 6.5 * 60
    assert clock.next_trial() is None
    now[0] = 0.0
    open_ended = SearchClock(10, 0, now=lambda: now[0])  # no trial budget: what is left
    assert open_ended.next_trial() == 10
    now[0] = 6.5 * 60
    assert open_ended.next_trial() == 3.5
    now[0] = 10 * 60
    assert open_ended.next_trial() is None
    assert SearchClock(None, 3, now=lambda: now[0]).next_trial() == 3
