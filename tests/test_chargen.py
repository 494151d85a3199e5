"""Character generation task: train, save, reload, generate, evaluate, CLI and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, invoke, write_pipeline

import nlpseq
from nlpseq.config import TokenizerConfig, load_config
from nlpseq.tasks.chargen import CharCodec
from nlpseq.tokenize import UNK, TextTokenizer
from nlpseq.trainer import train

VERSE = "row to the light,\nkeep left of the bell;\nthe steps are wet.\n"
TEXT = VERSE * 12  # 708 characters: the last 10% validates

def chargen_pipeline(directory: Path, text: str = TEXT) -> Path:
    """``text`` as the training file of the tiny chargen pipeline (the last 10% validates)."""
    (directory / "text.txt").write_text(text, encoding="utf-8")
    return write_pipeline(directory, "chargen", {"train": directory / "text.txt"})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained until it knows the verse by heart (shared, read-only)."""
    base = tmp_path_factory.mktemp("chargen")
    result = train(
        load_config(chargen_pipeline(base)), base / "run", log=lambda _m: None, progress=False
    )
    assert result.metrics["dev"]["loss"] < 0.05, result.history
    return base / "run"


def test_overfits_then_reproduces_the_text_greedily_after_reload(run_dir):
    generator = nlpseq.load(run_dir)
    prompt = TEXT[:6]
    out = generator.generate(prompt, length=len(VERSE) * 2, temperature=0.0)
    assert out == TEXT[: len(prompt) + len(VERSE) * 2]
    # top-k 1 samples the argmax: the same text as greedy, whatever the seed
    assert generator.generate(prompt, length=40, top_k=1, seed=5) == out[: len(prompt) + 40]


def test_weight_drop_pipeline_learns_and_reloads(tmp_path):
    config = load_config(chargen_pipeline(tmp_path), overrides=["model.weight_drop=0.3"])
    result = train(config, tmp_path / "run", log=lambda _m: None, progress=False)
    assert result.metrics["dev"]["loss"] < 0.5, result.history
    reloaded = nlpseq.load(tmp_path / "run")
    assert reloaded.config.model.weight_drop == 0.3
    # evaluation draws no masks: the reloaded model scores the dev text as training did
    dev = reloaded.evaluate_files([str(tmp_path / "text.txt")])
    again = nlpseq.load(tmp_path / "run").evaluate_files([str(tmp_path / "text.txt")])
    assert dev["loss"] == again["loss"]


def test_sampling_with_a_seed_is_reproducible(run_dir):
    first = nlpseq.load(run_dir).generate("the ", length=80, temperature=1.5, seed=7)
    again = nlpseq.load(run_dir).generate("the ", length=80, temperature=1.5, seed=7)
    other = nlpseq.load(run_dir).generate("the ", length=80, temperature=1.5, seed=8)
    assert first == again and first != other
    assert len(first) == 84 and first.startswith("the ")


def test_split_by_position_and_character_vocabulary(tmp_path):
    from nlpseq.tasks.chargen import ChargenTask

    task = ChargenTask(load_config(chargen_pipeline(tmp_path)))
    task.prepare(lambda _m: None)
    n_train = int(len(TEXT) * 0.9)
    assert len(task.train_ids) == n_train and len(task.val_ids) == len(TEXT) - n_train
    assert task.codec.decode(task.val_ids.tolist()) == TEXT[n_train:]
    assert task.codec.vocab_size == 4 + len(set(TEXT))


def test_codec_matches_the_tokenizer_and_keeps_literal_specials():
    tokenizer = TextTokenizer.train(["abc\n", "ba c"], TokenizerConfig(kind="char"))
    codec = CharCodec(tokenizer)
    ids, unknown = codec.encode("cab\n ab")
    assert ids.tolist() == tokenizer.encode("cab\n ab")
    ids, unknown = codec.encode("a<unk>é")
    assert ids[0] == tokenizer.token_to_id("a") and (ids[1:] == UNK).all()
    assert unknown == sorted(set("<unk>é"))


def test_cli_generate_streams_prompt_then_text(run_dir):
    args = ("generate", run_dir, "--prompt", "the s", "--length", 30, "--seed", 4)
    result = invoke(*args, "--temperature", 0.8, "--top-p", 0.9)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("the s") and len(result.stdout) == len("the s") + 30 + 1
    assert invoke(*args, "--temperature", 0.8, "--top-p", 0.9).stdout == result.stdout
    greedy = invoke(*args, "--temperature", 0)
    assert greedy.stdout == nlpseq.load(run_dir).generate("the s", 30, temperature=0) + "\n"


def test_cli_generate_empty_prompt_and_unknown_characters(run_dir):
    empty = invoke("generate", run_dir, "--prompt", "", "--length", 20, "--seed", 1)
    assert empty.exit_code == 0 and len(empty.stdout) == 21
    unknown = invoke("generate", run_dir, "--prompt", "Quiz", "--length", 5, "--seed", 1)
    assert unknown.exit_code == 0 and unknown.stdout.startswith("Quiz")
    assert unknown.stderr.count("\n") == 1 and '"Q", "u", "z"' in unknown.stderr


@pytest.mark.parametrize(
    "option, fragment",
    [
        (("--length", "0"), "length must be between 1 and"),
        (("--length", "-3"), "length must be between 1 and"),
        (("--temperature", "-0.5"), "temperature must be a finite number >= 0"),
        (("--top-p", "0"), "top_p must be in (0, 1]"),
        (("--top-p", "1.01"), "top_p must be in (0, 1]"),
        (("--top-k", "0"), "top_k must be >= 1"),
    ],
)
def test_cli_generate_bad_options_are_one_line_errors(run_dir, option, fragment):
    assert_one_line_error(invoke("generate", run_dir, "--prompt", "the", *option), fragment)


def test_cli_evaluate_json_sums_over_the_whole_file(run_dir, tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text(VERSE * 3, encoding="utf-8")
    result = invoke("evaluate", run_dir, path, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert set(metrics) == {"loss", "bpc", "perplexity", "n_chars"}
    assert metrics["n_chars"] == len(VERSE) * 3 - 1
    assert metrics["bpc"] == pytest.approx(metrics["loss"] / math.log(2))
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert metrics["loss"] < 0.2


def test_dynamic_evaluation_from_the_pipeline_key_and_the_cli(run_dir, tmp_path):
    """eval.dynamic_lr adapts while scoring, as one stream of eval.dynamic_window windows;
    --dynamic-lr overrides it (0: fixed weights) and the run's weights stay as they were."""
    import dataclasses

    from nlpseq.lmdata import evaluate_stream

    text = VERSE.replace("bell", "belt") * 4  # a variant the model has not learnt
    path = tmp_path / "eval.txt"
    path.write_text(text, encoding="utf-8")
    task = nlpseq.load(run_dir)
    static = task.evaluate_files([str(path)])
    config = task.config
    task.config = dataclasses.replace(config, eval=dataclasses.replace(
        config.eval, dynamic_lr=0.05, dynamic_window=20))
    dynamic = task.evaluate_files([str(path)])
    ids, _ = task.codec.encode(text)
    assert dynamic == evaluate_stream(task.model, ids, 1, 20, adapt_lr=0.05)
    assert dynamic["loss"] < static["loss"] and dynamic["n_chars"] == static["n_chars"]
    assert task.evaluate_files([str(path)], dynamic_lr=0.0) == static

    cli = json.loads(invoke("evaluate", run_dir, path, "--dynamic-lr", 0.05, "--json").stdout)
    assert cli == evaluate_stream(task.model, ids, 1, config.eval.dynamic_window, adapt_lr=0.05)
    assert json.loads(invoke("evaluate", run_dir, path, "--json").stdout) == static


@pytest.mark.parametrize("args, fragment", [
    (["--dynamic-lr", 0.1, "--backend", "int8"], "onnx and int8 backends cannot"),
    (["--beam", 2], "option 'beam' does not apply to a chargen run"),
    (["--dynamic-lr", "inf"], "dynamic_lr must be a finite number >= 0, got inf"),
    (["--dynamic-lr", "nan"], "dynamic_lr must be a finite number >= 0, got nan"),
])
def test_cli_evaluate_bad_options_are_one_line_errors(run_dir, tmp_path, args, fragment):
    path = tmp_path / "eval.txt"
    path.write_text(VERSE, encoding="utf-8")
    assert_one_line_error(invoke("evaluate", run_dir, path, *args), fragment)


def test_evaluate_files_reads_in_pieces_with_the_figures_of_the_whole_text(
        run_dir, tmp_path, monkeypatch):
    """Read a few bytes at a time and held as one byte a character, a file gives exactly the
    figures of its whole text encoded at once (CRLF line ends, an unseen character)."""
    from nlpseq import corpora
    from nlpseq.lmdata import evaluate_stream

    text = VERSE * 3 + "the bell — the steps\n"
    path = tmp_path / "eval.txt"
    path.write_bytes(text.replace("\n", "\r\n").encode("utf-8"))
    predictor = nlpseq.load(run_dir)
    task = predictor
    ids, unknown = task.codec.encode(text)
    config = task.config
    whole = evaluate_stream(task.model, ids, config.eval.batch_size, config.model.seq_len,
                            context=config.model.eval_context)
    monkeypatch.setattr(corpora, "TEXT_BLOCK", 7)
    assert len(list(corpora.iter_text(path))) > 3
    compact, also_unknown = task.codec.encode_pieces(corpora.iter_text(path))
    assert compact.dtype == torch.uint8 and torch.equal(compact.long(), ids)
    assert also_unknown == unknown == ["—"]
    assert predictor.evaluate_files([str(path)]) == whole


def test_training_text_shorter_than_one_window_is_an_error(tmp_path):
    pipeline = chargen_pipeline(tmp_path, "too short")
    result = invoke("train", pipeline, "--out", tmp_path / "run", "--quiet")
    assert_one_line_error(result, "shorter than one window")


def test_predict_scores_each_line(run_dir):
    result = invoke(
        "predict", run_dir, "--json", input="keep left of the bell;\nzz\n"
    )
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["n_chars"] == 21 and first["loss"] < second["loss"]
    assert torch.isfinite(torch.tensor(first["bpc"]))
    short = invoke("predict", run_dir, "--json", input="k\n")
    assert json.loads(short.stdout) == {"loss": None, "bpc": None, "perplexity": None,
                                        "n_chars": 0}  # valid JSON: null, never NaN


def test_bench_measures_generation_speed(run_dir):
    result = invoke("bench", "--run", run_dir, "--length", 50, "--seconds", "0.2",
                    "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["task"] == "chargen" and figures["length"] == 50
    assert figures["generate_chars_per_s"] > 0
