"""Command line: train / evaluate / predict, help texts, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import PROBES, assert_one_line_error, invoke, write_pipeline, write_tsv

from nlpseq import checkpoint as ckpt
from nlpseq.cli import main

NLPSEQ = Path(sys.executable).parent / "nlpseq"


def test_train_prints_dev_metrics_as_json(tmp_path, corpus):
    pipeline = write_pipeline(tmp_path, "sentiment", corpus, {"train.epochs": 1})
    result = invoke("train", pipeline, "--out", tmp_path / "run", "--quiet",
                    "--set", "train.epochs=2", "--set", "model.hidden_size=4")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert {"accuracy", "macro_f1", "n"} <= set(metrics) and metrics["n"] == 8
    history = ckpt.RunDir(tmp_path / "run").history()
    assert len(history) == 2  # --set overrode the file
    assert "epoch 2" in result.stderr  # progress and logs go to stderr


def test_evaluate_json_is_exactly_one_object(trained_run):
    result = invoke("evaluate", trained_run.run_dir, trained_run.corpus["dev"], "--json")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and result.stdout.endswith("}\n")
    metrics = json.loads(result.stdout)
    assert {"accuracy", "macro_f1", "n"} <= set(metrics)
    assert metrics["n"] == 8 and metrics["accuracy"] == 100.0
    plain = invoke("evaluate", trained_run.run_dir, trained_run.corpus["dev"])
    assert plain.exit_code == 0 and "accuracy\t100.0000" in plain.stdout.splitlines()
    assert_one_line_error(invoke("evaluate", trained_run.run_dir, trained_run.corpus["dev"],
                                 "--beam", "2"), "'beam' does not apply to a sentiment run")


def test_predict_from_file_and_stdin(trained_run, tmp_path):
    expected = [p["label"] for p in trained_run.predictions]
    inputs = tmp_path / "inputs.txt"
    inputs.write_text("\n".join(PROBES) + "\n", encoding="utf-8")
    from_file = invoke("predict", trained_run.run_dir, "--input", inputs)
    assert from_file.exit_code == 0, from_file.output
    assert from_file.stdout.splitlines() == expected
    from_stdin = invoke("predict", trained_run.run_dir, input="\n".join(PROBES) + "\n")
    assert from_stdin.stdout.splitlines() == expected
    dash = invoke("predict", trained_run.run_dir, "--input", "-", input=PROBES[0] + "\n")
    assert dash.stdout.splitlines() == expected[:1]


def test_predict_json(trained_run):
    result = invoke("predict", trained_run.run_dir, "--json", input="\n".join(PROBES) + "\n")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(PROBES)
    for row, expected in zip(rows, trained_run.predictions):
        assert row["label"] == expected["label"]
        assert set(row["probabilities"]) == {"neg", "pos"}
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert max(row["probabilities"], key=row["probabilities"].get) == row["label"]


@pytest.mark.parametrize("command, options", [
    ([], ["--debug", "--version", "train", "evaluate", "predict", "bench"]),
    (["train"], ["PIPELINE", "--out", "--set", "--quiet"]),
    (["evaluate"], ["RUN_DIR", "--json", "--device"]),
    (["predict"], ["RUN_DIR", "--input", "--json", "--device"]),
    (["bench"], ["--json", "--seconds", "--batch-size", "--pooling", "--threads", "--run"]),
])
def test_help(command, options):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    for option in options:
        assert option in result.stdout


def test_every_command_has_help_for_every_option():
    for name, command in main.commands.items():
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                assert param.help, f"nlpseq {name} {param.opts[0]} has no help text"


def test_help_is_fast_without_torch():
    code = "import sys, nlpseq.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- bad input: one line on stderr naming file (and line), exit 1, no traceback ----------


def test_missing_data_file(trained_run, tmp_path):
    missing = tmp_path / "missing.tsv"
    assert_one_line_error(invoke("evaluate", trained_run.run_dir, missing),
                          str(missing), "not found")


def test_empty_data_file(trained_run, tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    assert_one_line_error(invoke("evaluate", trained_run.run_dir, empty), str(empty), "empty")


def test_row_without_label(trained_run, tmp_path):
    path = tmp_path / "eval.tsv"
    path.write_text("label\ttext\npos\tgood\nneg\tbad\nthe film is fine\n")
    assert_one_line_error(invoke("evaluate", trained_run.run_dir, path), f"{path}:4:")
    path.write_text("text\tlabel\ngood\tpos\nbad\t\n")
    assert_one_line_error(invoke("evaluate", trained_run.run_dir, path), f"{path}:3:",
                          "no value")


def test_unknown_label_at_evaluation(trained_run, tmp_path):
    path = write_tsv(tmp_path / "eval.tsv", [("pos", "good"), ("neutral", "ok")])
    assert_one_line_error(invoke("evaluate", trained_run.run_dir, path), f"{path}:3:",
                          "unknown label 'neutral'")


def test_invalid_utf8(trained_run, tmp_path):
    path = tmp_path / "eval.tsv"
    path.write_bytes(b"label\ttext\npos\tgood\nneg\tcaf\xe9 bad\n")
    assert_one_line_error(invoke("evaluate", trained_run.run_dir, path), f"{path}:3:", "UTF-8")
    inputs = tmp_path / "inputs.txt"
    inputs.write_bytes(b"good\n\xff\xfe bad\n")
    assert_one_line_error(invoke("predict", trained_run.run_dir, "--input", inputs),
                          f"{inputs}:2:", "UTF-8")
    stdin = invoke("predict", trained_run.run_dir, input=b"good\n\xff bad\n")
    assert_one_line_error(stdin, "<stdin>:2:", "UTF-8")


def test_config_with_wrong_type(tmp_path, corpus):
    pipeline = write_pipeline(tmp_path, "sentiment", corpus)
    text = pipeline.read_text().replace("hidden_size: 8", "hidden_size: eight")
    pipeline.write_text(text)
    line = text.splitlines().index("  hidden_size: eight") + 1
    assert_one_line_error(invoke("train", pipeline, "--out", tmp_path / "run"),
                          f"{pipeline}:{line}:", "model.hidden_size", "integer")
    assert not (tmp_path / "run").exists()


def test_bad_override(tmp_path, corpus):
    pipeline = write_pipeline(tmp_path, "sentiment", corpus)
    assert_one_line_error(
        invoke("train", pipeline, "--out", tmp_path / "run", "--set", "train.epoch=3"),
        "train.epoch", "train.epochs")


def test_missing_training_data(tmp_path, corpus):
    corpus = {**corpus, "train": tmp_path / "nope.tsv"}
    pipeline = write_pipeline(tmp_path, "sentiment", corpus)
    assert_one_line_error(invoke("train", pipeline, "--out", tmp_path / "run"),
                          str(tmp_path / "nope.tsv"), "not found")


def test_run_dir_that_is_not_a_checkpoint(tmp_path, corpus):
    (tmp_path / "notarun").mkdir()
    assert_one_line_error(invoke("evaluate", tmp_path / "notarun", corpus["dev"]),
                          str(tmp_path / "notarun"), "not a checkpoint")
    assert_one_line_error(invoke("predict", tmp_path / "missing", input="good\n"),
                          str(tmp_path / "missing"), "not found")


def test_bad_device(trained_run):
    assert_one_line_error(invoke("predict", trained_run.run_dir, "--device", "gpu",
                                 input="good\n"), "device 'gpu'")


def test_corrupt_weights(trained_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    weights = ckpt.RunDir(run).file(ckpt.WEIGHTS)
    weights.unlink()  # a hard link: replace it, not the original run's file
    weights.write_bytes(b"not safetensors")
    assert_one_line_error(invoke("predict", run, input="good\n"), str(weights), "weights")


def _subprocess(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(NLPSEQ), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_real_process_error_and_debug_traceback(tmp_path, corpus):
    """Through the installed script: one line without --debug, a traceback with it."""
    (tmp_path / "notarun").mkdir()
    quiet = _subprocess("evaluate", tmp_path / "notarun", corpus["dev"])
    assert quiet.returncode == 1
    assert quiet.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'notarun'}: not a checkpoint: config.yaml is missing"]
    assert quiet.stdout == ""
    debug = _subprocess("--debug", "evaluate", tmp_path / "notarun", corpus["dev"])
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "NlpseqError" in debug.stderr


def test_real_process_help():
    result = _subprocess("--help")
    assert result.returncode == 0 and "train" in result.stdout and result.stderr == ""


def test_bench_times_a_trained_run(trained_run, tmp_path):
    lines = tmp_path / "probe.txt"
    lines.write_text("\n".join(PROBES) + "\n", encoding="utf-8")
    result = invoke("bench", "--run", trained_run.run_dir, "--input", lines, "--seconds", "0.1",
                    "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["task"] == "sentiment" and figures["lines"] == len(PROBES)
    assert figures["lines_per_s"] > 0
    missing = invoke("bench", "--run", trained_run.run_dir)
    assert_one_line_error(missing, "--input")


def test_predict_format_is_for_ner_runs(trained_run):
    result = invoke("predict", trained_run.run_dir, "--format", "conll", input="a film\n")
    assert_one_line_error(result, "option 'input_format' does not apply", "sentiment")


def test_bench_alternates_rounds(monkeypatch):
    from nlpseq import bench

    calls = []
    monkeypatch.setattr(bench, "_rate", lambda fn, seconds: calls.append((fn(), seconds)) or 1.0)
    first, second = bench._alternate(lambda: "a", lambda: "b", (10.0, 2.0), rounds=5)
    assert first == second == [1.0] * 5
    assert calls == [("a", 2.0), ("b", 0.4)] * 5


@pytest.mark.parametrize("pooling", ["last", "max-mean"])
def test_bench_on_the_demo_corpus(pooling, monkeypatch):
    monkeypatch.delenv("NLPSEQ_CORPORA", raising=False)
    result = invoke("bench", "--seconds", "0.4", "--pooling", pooling, "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["pooling"] == pooling and figures["corpus"].endswith("train.tsv")
    for key in ("text_sentences_per_s", "train_tokens_per_s", "inference_sentences_per_s",
                "matmul_gflops"):
        assert figures[key] > 0
    # the median of round-by-round ratios, near the ratio of the medians
    assert figures["train_fraction_of_matmul"] == pytest.approx(
        figures["train_gflops"] / figures["matmul_gflops"], rel=0.5)
