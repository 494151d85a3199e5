"""Translation task: parallel reader, overfitting 20 pairs, CLI translate/evaluate, heat maps."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner

import nlpseq
from nlpseq.cli import main
from nlpseq.config import load_config
from nlpseq.corpora import read_parallel
from nlpseq.errors import NlpseqError
from nlpseq.plot import attention_png
from nlpseq.trainer import train

SUBJECTS = [("The man", "Der Mann"), ("The woman", "Die Frau"), ("The dog", "Der Hund"),
            ("The cat", "Die Katze"), ("The child", "Das Kind")]
VERBS = [("is running", "läuft"), ("is sleeping", "schläft"), ("is eating", "isst"),
         ("is singing", "singt")]
PAIRS = [(f"{s} {v}.", f"{sd} {vd}.") for s, sd in SUBJECTS for v, vd in VERBS]  # 20 pairs

PIPELINE = """\
task: translate
data:
  format: parallel
  train: {src}
  train_target: {tgt}
  dev: {src}
  dev_target: {tgt}
  max_source_length: {max_len}
  max_target_length: {max_len}
tokenizer:
  kind: bpe
  joint: {joint}
  max_size: 100
model:
  cell: {cell}
  embedding_dim: 32
  hidden_size: 64
  attention: {attention}
  dropout: 0.0
  label_smoothing: 0.0
train:
  epochs: {epochs}
  batch_size: 5
  lr: 0.01
  schedule: none
  patience: 0
  evals_per_epoch: 1
  seed: 3
  device: cpu
  threads: 1
eval:
  beam: 3
"""


def write_parallel(directory: Path, pairs, gz: bool = False) -> tuple[Path, Path]:
    suffix = ".gz" if gz else ""
    src, tgt = directory / f"src.en{suffix}", directory / f"tgt.de{suffix}"
    for path, side in ((src, 0), (tgt, 1)):
        text = "".join(pair[side] + "\n" for pair in pairs).encode("utf-8")
        path.write_bytes(gzip.compress(text) if gz else text)
    return src, tgt


def write_pipeline(directory: Path, src: Path, tgt: Path, *, epochs: int = 40,
                   joint: bool = True, cell: str = "gru", attention: str = "general",
                   max_len: int = 50) -> Path:
    path = directory / "translate.yaml"
    path.write_text(PIPELINE.format(src=src, tgt=tgt, epochs=epochs, joint=str(joint).lower(),
                                    cell=cell, attention=attention, max_len=max_len),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GRU translation model trained once on the 20 pairs (read-only for the tests)."""
    base = tmp_path_factory.mktemp("translate")
    src, tgt = write_parallel(base, PAIRS)
    result = train(load_config(write_pipeline(base, src, tgt)), base / "run",
                   log=lambda _m: None, progress=False)
    assert result.metrics["dev"]["bleu"] == pytest.approx(100.0), result.history
    return base / "run"


def test_overfits_twenty_pairs_and_translates_them_back_exactly(trained: Path):
    task = nlpseq.load(trained)
    sources = [s for s, _ in PAIRS]
    references = [t for _, t in PAIRS]
    assert task.translate(sources, beam=5) == references
    assert task.translate(sources, beam=1) == references
    history = [json.loads(line) for line in (trained / "history.jsonl").read_text().splitlines()]
    assert {"bleu", "chrf", "loss", "perplexity"} <= set(history[-1])


def test_separate_vocabularies_and_lstm_bahdanau(tmp_path: Path):
    src, tgt = write_parallel(tmp_path, PAIRS[:8])
    config = load_config(write_pipeline(tmp_path, src, tgt, epochs=3, joint=False, cell="lstm",
                                        attention="bahdanau"))
    train(config, tmp_path / "run", log=lambda _m: None, progress=False)
    assert (tmp_path / "run" / "source_tokenizer.json").is_file()
    assert (tmp_path / "run" / "target_tokenizer.json").is_file()
    outputs = nlpseq.load(tmp_path / "run").translate(["The man is running.", ""], beam=2)
    assert len(outputs) == 2 and outputs[1] == ""


def test_empty_lines_and_unseen_characters(trained: Path):
    task = nlpseq.load(trained)
    outputs = task.translate(["", "The dog is eating.", "   ", "Zebra ☃ ∑ läuft?"], beam=3)
    assert outputs[0] == "" and outputs[2] == ""
    assert outputs[1] == "Der Hund isst."
    assert isinstance(outputs[3], str)


def test_cli_translate_keeps_line_count_and_writes_heat_map(trained: Path, tmp_path: Path):
    source = tmp_path / "in.txt"
    source.write_text("The cat is singing.\n\nThe child is sleeping.\n", encoding="utf-8")
    plot = tmp_path / "attention.png"
    runner = CliRunner()
    result = runner.invoke(main, ["translate", str(trained), "--input", str(source), "--beam",
                                  "4", "--attention-plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert result.output.split("\n")[:3] == ["Die Katze singt.", "", "Das Kind schläft."]
    assert (tmp_path / "attention-1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "attention-3.png").is_file()
    assert not (tmp_path / "attention-2.png").exists()  # the empty line has no plot
    piped = runner.invoke(main, ["translate", str(trained)], input="The man is eating.\n")
    assert piped.exit_code == 0 and piped.output == "Der Mann isst.\n"


def test_cli_translate_bad_input_is_a_one_line_error(trained: Path, tmp_path: Path):
    runner = CliRunner()
    bad = runner.invoke(main, ["translate", str(trained)], input=b"The man.\nbad \xff byte\n")
    assert bad.exit_code == 1 and "<stdin>:2: invalid UTF-8" in bad.stderr, bad.output
    plot = tmp_path / "missing" / "a.png"
    nowhere = runner.invoke(main, ["translate", str(trained), "--attention-plot", str(plot)],
                            input="The man is eating.\n")
    assert nowhere.exit_code == 1 and nowhere.stdout == "", nowhere.output
    assert nowhere.stderr.strip() == f"error: {plot}: --attention-plot: the folder does not exist"
    with pytest.raises(TypeError, match="list of texts"):
        nlpseq.load(trained).translate("The man is eating.")


def test_cli_evaluate_json(trained: Path, tmp_path: Path):
    src, tgt = write_parallel(tmp_path, PAIRS[:6], gz=True)
    result = CliRunner().invoke(main, ["evaluate", str(trained), str(src), str(tgt), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["bleu"] == pytest.approx(100.0)
    assert metrics["chrf"] == pytest.approx(100.0)
    assert metrics["n"] == 6
    assert metrics["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")


def test_mismatched_files_are_a_one_line_error(trained: Path, tmp_path: Path):
    src, _ = write_parallel(tmp_path, PAIRS[:6])
    short = tmp_path / "short.de"
    short.write_text("Der Mann läuft.\n", encoding="utf-8")
    with pytest.raises(NlpseqError, match=r"src\.en has 6 lines.*short\.de has 1 lines"):
        read_parallel(src, short)
    result = CliRunner().invoke(main, ["evaluate", str(trained), str(src), str(short)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "short.de has 1 lines" in result.output
    config = write_pipeline(tmp_path, src, short)
    result = CliRunner().invoke(main, ["train", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "differ in length" in result.output


def test_reader_reads_gzip_and_long_pairs_are_dropped(tmp_path: Path):
    pairs = [*PAIRS[:5], ("a " * 30, "b " * 30), ("", "Leer."), ("The man is eating.", "")]
    src, tgt = write_parallel(tmp_path, pairs, gz=True)
    data = read_parallel(src, tgt)
    assert data.sources[:5] == [s for s, _ in PAIRS[:5]] and data.lines[5] == 6
    messages: list[str] = []
    config = load_config(write_pipeline(tmp_path, src, tgt, max_len=20))
    from nlpseq.tasks.translate import TranslateTask

    task = TranslateTask(config)
    task.prepare(messages.append)
    assert len(task.train_pairs) == 5
    assert "dropped 1 longer than 20" in messages[0] and "2 with an empty side" in messages[0]


def test_attention_png_is_valid(tmp_path: Path):
    path = tmp_path / "a.png"
    attention_png([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]], ["▁Ein", "ß", "</s>"], ["x", "</s>"], path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    length = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    raw = zlib.decompress(data[41 : 41 + length])
    assert len(raw) == height * (1 + 3 * width)
