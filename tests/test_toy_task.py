"""A new task is one model, one task module and one table row: the toy task of toy_task.py
trains, saves, loads, evaluates and predicts through the CLI with no other file touched."""

from __future__ import annotations

import json
import random

import pytest
from helpers import assert_one_line_error, invoke
from toy_task import ToyTask

import nlpseq
from nlpseq.tasks import TASKS


def _rows(seed: int, n: int) -> str:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        text = "".join(rng.choice("ab") for _ in range(rng.choice([3, 5, 7])))
        lines.append(f"{'a' if text.count('a') > text.count('b') else 'b'}\t{text}\n")
    return "".join(lines)


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setitem(TASKS, "toy", ToyTask)  # the one table row
    (tmp_path / "train.txt").write_text(_rows(1, 200))
    (tmp_path / "dev.txt").write_text(_rows(2, 40))
    pipeline = tmp_path / "toy.yaml"
    pipeline.write_text(
        f"task: toy\ndata:\n  format: lines\n  train: {tmp_path / 'train.txt'}\n"
        f"  dev: {tmp_path / 'dev.txt'}\nmodel:\n  hidden_size: 16\n"
        "train:\n  epochs: 30\n  batch_size: 16\n  lr: 0.02\n  device: cpu\n  threads: 1\n"
        "  patience: 0\n  schedule: none\n")
    return tmp_path, pipeline


def test_a_toy_task_trains_saves_loads_and_predicts(toy):
    tmp_path, pipeline = toy
    trained = invoke("train", pipeline, "--out", tmp_path / "run", "--quiet", check=True)
    assert json.loads(trained.stdout)["accuracy"] >= 95.0
    scored = invoke("evaluate", tmp_path / "run", tmp_path / "dev.txt", "--json", check=True)
    assert json.loads(scored.stdout)["n"] == 40
    predicted = invoke("predict", tmp_path / "run", input="aaaab\nbbbba\nabbbb\n", check=True)
    assert predicted.stdout.splitlines() == ["a", "b", "b"]
    assert nlpseq.load(tmp_path / "run").predict(["aaaaaab"]) == ["a"]


def test_a_toy_task_key_is_checked_and_commands_it_lacks_are_refused(toy):
    tmp_path, pipeline = toy
    text = pipeline.read_text().replace("hidden_size: 16", "hidden_size: 16\n  pooling: max")
    pipeline.write_text(text)
    assert_one_line_error(invoke("train", pipeline, "--out", tmp_path / "bad"), "pooling")
    pipeline.write_text(text.replace("\n  pooling: max", "").replace("epochs: 30", "epochs: 1"))
    invoke("train", pipeline, "--out", tmp_path / "run", "--quiet", check=True)
    assert_one_line_error(invoke("translate", tmp_path / "run", input="ab\n"),
                          "translate needs a run of a task that offers it", "toy run")
