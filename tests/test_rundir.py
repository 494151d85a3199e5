"""Run directories: a checkpoint is one unit, one writer at a time, exact mid-epoch resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from filelock import FileLock
from helpers import ROOT, write_pipeline
from safetensors.torch import load_file

import nlpseq
from nlpseq import checkpoint as ckpt
from nlpseq import trainer
from nlpseq.config import load_config
from nlpseq.errors import NlpseqError


def run(pipeline, out, *overrides):
    return trainer.train(load_config(pipeline, list(overrides)), out, log=lambda _m: None,
                         progress=False)


def weights(out: Path, name: str = ckpt.LAST_WEIGHTS) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt.RunDir(out).file(name)))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


DEMO = ROOT / "corpora"
# Each task with dropout on and what makes its resume hard: chargen carries its recurrent
# state across windows, translation's scheduled sampling draws random numbers.
TASKS = {
    "sentiment": ({"train": DEMO / "sentiment/train.tsv", "dev": DEMO / "sentiment/dev.tsv"},
                  {"data.limit": 60, "model.dropout": 0.3, "model.word_dropout": 0.1}),
    "ner": ({"train": DEMO / "ner/train.txt", "dev": DEMO / "ner/dev.txt"},
            {"data.limit": 30, "model.dropout": 0.3, "model.word_dropout": 0.1}),
    "chargen": ({"train": DEMO / "chargen/lanterns.txt"},
                {"data.limit": 2500, "model.dropout": 0.3}),
    "translate": ({"train": DEMO / "translate/train.en",
                   "train_target": DEMO / "translate/train.de",
                   "dev": DEMO / "translate/dev.en", "dev_target": DEMO / "translate/dev.de"},
                  {"data.limit": 30, "model.dropout": 0.3, "model.teacher_forcing": 0.5}),
}


@pytest.mark.heavy
@pytest.mark.parametrize("task", sorted(TASKS))
def test_resume_mid_epoch_is_exact(task, tmp_path, monkeypatch):
    """Killed right after a mid-epoch checkpoint, resumed: the same weights and history as a
    run that was never interrupted (so no RNG state or carried state was lost)."""
    data, settings = TASKS[task]
    pipeline = write_pipeline(tmp_path, task, data, {
        **settings, "train.epochs": 2, "train.evals_per_epoch": 2})
    run(pipeline, tmp_path / "straight")
    commit = trainer.commit
    commits = {"n": 0}

    def die_after_third(s, *args):
        commit(s, *args)
        commits["n"] += 1
        if commits["n"] == 3:  # epoch 2, half-way
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "commit", die_after_third)
    with pytest.raises(KeyboardInterrupt):
        run(pipeline, tmp_path / "killed")
    monkeypatch.setattr(trainer, "commit", commit)
    state = ckpt.read_json(ckpt.RunDir(tmp_path / "killed").file(ckpt.TRAINER_STATE))
    assert state["epoch"] == 1 and state["batch"] > 0  # really mid-epoch
    run(pipeline, tmp_path / "killed", "train.resume=true")
    assert_same(weights(tmp_path / "straight"), weights(tmp_path / "killed"))
    assert_same(weights(tmp_path / "straight", ckpt.WEIGHTS),
                weights(tmp_path / "killed", ckpt.WEIGHTS))
    straight = ckpt.RunDir(tmp_path / "straight").history()
    resumed = ckpt.RunDir(tmp_path / "killed").history()
    assert [h["step"] for h in resumed] == [h["step"] for h in straight]
    assert [h["train_loss"] for h in resumed] == [h["train_loss"] for h in straight]


def test_a_kill_inside_a_commit_leaves_the_previous_checkpoint(pipeline, tmp_path, monkeypatch):
    run(pipeline, tmp_path / "straight", "train.epochs=3")
    out = tmp_path / "run"
    write_json = ckpt.write_json
    calls = {"n": 0}

    def die_at_second_switch(path, data):
        if Path(path).name == ckpt.POINTER:
            calls["n"] += 1
            if calls["n"] == 2:  # the new folder is complete, the pointer not yet switched
                raise KeyboardInterrupt
        write_json(path, data)

    monkeypatch.setattr(ckpt, "write_json", die_at_second_switch)
    with pytest.raises(KeyboardInterrupt):
        run(pipeline, out, "train.epochs=3")
    monkeypatch.setattr(ckpt, "write_json", write_json)
    assert len(list((out / ckpt.CHECKPOINTS).iterdir())) == 2  # the orphan is still there
    rundir = ckpt.RunDir(out)
    assert rundir.current().name == "000001" and len(rundir.history()) == 1
    assert ckpt.read_json(rundir.file(ckpt.METRICS))["best_epoch"] == 1
    assert nlpseq.load(out).predict(["good"])[0]["label"] in ("pos", "neg")
    run(pipeline, out, "train.epochs=3", "train.resume=true")
    assert [h["epoch"] for h in rundir.history()] == [1, 2, 3]
    assert [p.name for p in (out / ckpt.CHECKPOINTS).iterdir()] == [rundir.current().name]
    assert_same(weights(tmp_path / "straight"), weights(out))


def test_a_kill_before_the_first_checkpoint_starts_again(pipeline, tmp_path, monkeypatch):
    def die(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "commit", die)
    with pytest.raises(KeyboardInterrupt):
        run(pipeline, tmp_path / "run", "train.epochs=1")
    monkeypatch.undo()
    assert (tmp_path / "run" / ckpt.CONFIG).is_file()
    with pytest.raises(NlpseqError, match="no evaluation has finished"):
        nlpseq.load(tmp_path / "run")
    result = run(pipeline, tmp_path / "run", "train.epochs=1")
    assert len(result.history) == 1


def test_one_writer_per_run_directory(pipeline, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with FileLock(str(out / ckpt.LOCK)), pytest.raises(NlpseqError, match="another process"):
        run(pipeline, out, "train.epochs=1")
    assert run(pipeline, out, "train.epochs=1").history  # released: trains


def test_out_must_be_new_empty_or_a_run(pipeline, tmp_path):
    notes = tmp_path / "mine" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("keep me")
    with pytest.raises(NlpseqError, match="not empty and is not a run directory"):
        run(pipeline, notes.parent, "train.epochs=1")
    assert [p.name for p in notes.parent.iterdir()] == ["notes.txt"]
    with pytest.raises(NlpseqError, match="must be a folder"):
        run(pipeline, notes, "train.epochs=1")


def test_pointer_to_a_missing_checkpoint_is_a_one_line_error(pipeline, tmp_path):
    run(pipeline, tmp_path / "run", "train.epochs=1")
    ckpt.write_json(tmp_path / "run" / ckpt.POINTER, {"checkpoint": "000099"})
    with pytest.raises(NlpseqError, match="damaged"):
        nlpseq.load(tmp_path / "run")


def test_run_files_are_readable_like_any_new_file(pipeline, tmp_path):
    run(pipeline, tmp_path / "run", "train.epochs=1")
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file() and path.name != ckpt.LOCK:
            assert path.stat().st_mode & 0o777 == ckpt.FILE_MODE, path


def test_training_draws_its_curves_and_reports_each_evaluation(pipeline, tmp_path):
    seen = []
    trainer.train(load_config(pipeline, ["train.epochs=2", "train.curves=true"]),
                  tmp_path / "run", log=lambda _m: None, progress=False,
                  on_evaluation=seen.append)
    assert seen == ckpt.RunDir(tmp_path / "run").history() and len(seen) == 2
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
