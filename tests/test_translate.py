"""Translation task: parallel reader, overfitting 20 pairs, CLI translate/evaluate, heat maps."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from helpers import invoke, write_pipeline

import nlpseq
from nlpseq import checkpoint as ckpt
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

def write_parallel(directory: Path, pairs, gz: bool = False) -> tuple[Path, Path]:
    suffix = ".gz" if gz else ""
    src, tgt = directory / f"src.en{suffix}", directory / f"tgt.de{suffix}"
    for path, side in ((src, 0), (tgt, 1)):
        text = "".join(pair[side] + "\n" for pair in pairs).encode("utf-8")
        path.write_bytes(gzip.compress(text) if gz else text)
    return src, tgt


def translate_pipeline(directory: Path, src: Path, tgt: Path,
                       settings: dict | None = None) -> Path:
    """The tiny translation pipeline training and validating on ``src`` → ``tgt``."""
    data = {"train": src, "train_target": tgt, "dev": src, "dev_target": tgt}
    return write_pipeline(directory, "translate", data, settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GRU translation model trained once on the 20 pairs (read-only for the tests)."""
    base = tmp_path_factory.mktemp("translate")
    src, tgt = write_parallel(base, PAIRS)
    result = train(load_config(translate_pipeline(base, src, tgt)), base / "run",
                   log=lambda _m: None, progress=False)
    assert result.metrics["dev"]["bleu"] == pytest.approx(100.0), result.history
    return base / "run"


@pytest.mark.heavy  # the shared model trains for about 10 s
def test_overfits_twenty_pairs_and_translates_them_back_exactly(trained: Path):
    task = nlpseq.load(trained)
    sources = [s for s, _ in PAIRS]
    references = [t for _, t in PAIRS]
    assert task.translate(sources, beam=5) == references
    assert task.translate(sources, beam=1) == references
    history = ckpt.RunDir(trained).history()
    assert {"bleu", "chrf", "loss", "perplexity"} <= set(history[-1])


def test_separate_vocabularies_and_lstm_bahdanau(tmp_path: Path):
    src, tgt = write_parallel(tmp_path, PAIRS[:8])
    config = load_config(translate_pipeline(tmp_path, src, tgt, {
        "train.epochs": 3, "tokenizer.joint": False, "model.cell": "lstm",
        "model.attention": "bahdanau"}))
    train(config, tmp_path / "run", log=lambda _m: None, progress=False)
    assert (tmp_path / "run" / "source_tokenizer.json").is_file()
    assert (tmp_path / "run" / "target_tokenizer.json").is_file()
    outputs = nlpseq.load(tmp_path / "run").translate(["The man is running.", ""], beam=2)
    assert len(outputs) == 2 and outputs[1] == ""


@pytest.mark.heavy  # the shared model trains for about 10 s
def test_empty_lines_and_unseen_characters(trained: Path):
    task = nlpseq.load(trained)
    outputs = task.translate(["", "The dog is eating.", "   ", "Zebra ☃ ∑ läuft?"], beam=3)
    assert outputs[0] == "" and outputs[2] == ""
    assert outputs[1] == "Der Hund isst."
    # Unseen characters: some line without the special tokens, the same when translated alone.
    assert outputs[3] == task.translate(["Zebra ☃ ∑ läuft?"], beam=3)[0]
    assert outputs[3] and "\n" not in outputs[3]
    assert not any(special in outputs[3] for special in ("<pad>", "<unk>", "<bos>", "<eos>"))


@pytest.mark.heavy  # the shared model trains for about 10 s
def test_cli_translate_keeps_line_count_and_writes_heat_map(trained: Path, tmp_path: Path):
    source = tmp_path / "in.txt"
    source.write_text("The cat is singing.\n\nThe child is sleeping.\n", encoding="utf-8")
    plot = tmp_path / "attention.png"
    result = invoke("translate", trained, "--input", source, "--beam", 4,
                    "--attention-plot", plot)
    assert result.exit_code == 0, result.output
    assert result.output.split("\n")[:3] == ["Die Katze singt.", "", "Das Kind schläft."]
    assert (tmp_path / "attention-1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "attention-3.png").is_file()
    assert not (tmp_path / "attention-2.png").exists()  # the empty line has no plot
    piped = invoke("translate", trained, input="The man is eating.\n")
    assert piped.exit_code == 0 and piped.output == "Der Mann isst.\n"


@pytest.mark.heavy  # the shared model trains for about 10 s
def test_cli_translate_bad_input_is_a_one_line_error(trained: Path, tmp_path: Path):
    bad = invoke("translate", trained, input=b"The man.\nbad \xff byte\n")
    assert bad.exit_code == 1 and "<stdin>:2: invalid UTF-8" in bad.stderr, bad.output
    plot = tmp_path / "missing" / "a.png"
    nowhere = invoke("translate", trained, "--attention-plot", plot,
                     input="The man is eating.\n")
    assert nowhere.exit_code == 1 and nowhere.stdout == "", nowhere.output
    assert nowhere.stderr.strip() == f"error: {plot}: --attention-plot: the folder does not exist"
    with pytest.raises(TypeError, match="list of texts"):
        nlpseq.load(trained).translate("The man is eating.")


@pytest.mark.heavy  # the shared model trains for about 10 s
def test_cli_evaluate_json(trained: Path, tmp_path: Path):
    src, tgt = write_parallel(tmp_path, PAIRS[:6], gz=True)
    result = invoke("evaluate", trained, src, tgt, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["bleu"] == pytest.approx(100.0)
    assert metrics["chrf"] == pytest.approx(100.0)
    assert metrics["n"] == 6
    assert metrics["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert metrics["beam"] == 3  # the run's eval.beam
    greedy = json.loads(invoke("evaluate", trained, src, tgt, "--json", "--beam", "1").output)
    assert greedy["beam"] == 1 and greedy["bleu"] == pytest.approx(100.0)


@pytest.mark.heavy  # the shared model trains for about 10 s
def test_evaluate_files_reads_in_parts_with_the_same_figures(trained: Path, tmp_path: Path,
                                                             monkeypatch):
    """Scored a few pairs at a time, with n-gram statistics and loss summed over the parts,
    the files give the figures they give read whole; they are not all perfect translations."""
    from nlpseq import corpora

    pairs = [*PAIRS[:7], ("The dog is singing.", "Der Hund schläft."), ("The cat", "Die Katze")]
    src, tgt = write_parallel(tmp_path, pairs)
    predictor = nlpseq.load(trained)
    whole = predictor.evaluate_files([str(src), str(tgt)])
    monkeypatch.setattr(corpora, "BLOCK", 2)
    parts = predictor.evaluate_files([str(src), str(tgt)])
    assert parts.pop("loss") == pytest.approx(whole.pop("loss"), rel=1e-6)
    assert parts.pop("perplexity") == pytest.approx(whole.pop("perplexity"), rel=1e-6)
    assert parts == whole
    assert whole["n"] == 9 and 0 < whole["bleu"] < 100


def test_translation_scores_from_summed_statistics_equal_sacrebleu():
    """BLEU and chrF from statistics summed over uneven parts equal sacreBLEU's corpus
    scores of the whole (brute force: its own corpus_score)."""
    import random

    from sacrebleu.metrics import BLEU, CHRF

    from nlpseq.metrics import TranslationCounts, translation_scores

    rng = random.Random(0)
    words = "the a cat dog sat on mat Haus ist ein der die das , .".split()
    hyps = [" ".join(rng.choices(words, k=rng.randint(0, 12))) for _ in range(200)]
    refs = [" ".join(rng.choices(words, k=rng.randint(1, 12))) for _ in range(200)]
    whole = translation_scores(hyps, refs)
    assert whole["bleu"] == BLEU().corpus_score(hyps, [refs]).score
    assert whole["chrf"] == CHRF().corpus_score(hyps, [refs]).score
    counts = TranslationCounts()
    for start, size in ((0, 1), (1, 7), (8, 50), (58, 142)):
        counts.add(hyps[start:start + size], refs[start:start + size])
    assert counts.result() == whole


@pytest.mark.heavy  # the shared model trains for about 10 s
def test_mismatched_files_are_a_one_line_error(trained: Path, tmp_path: Path):
    src, _ = write_parallel(tmp_path, PAIRS[:6])
    short = tmp_path / "short.de"
    short.write_text("Der Mann läuft.\n", encoding="utf-8")
    with pytest.raises(NlpseqError, match=r"src\.en has 6 lines.*short\.de has 1 lines"):
        read_parallel(src, short)
    result = invoke("evaluate", trained, src, short)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "short.de has 1 lines" in result.output
    config = translate_pipeline(tmp_path, src, short)
    result = invoke("train", config, "--out", tmp_path / "r")
    assert result.exit_code == 1 and "differ in length" in result.output


def test_reader_reads_gzip_and_long_pairs_are_dropped(tmp_path: Path):
    pairs = [*PAIRS[:5], ("a " * 30, "b " * 30), ("", "Leer."), ("The man is eating.", "")]
    src, tgt = write_parallel(tmp_path, pairs, gz=True)
    data = read_parallel(src, tgt)
    assert data.sources[:5] == [s for s, _ in PAIRS[:5]] and data.lines[5] == 6
    messages: list[str] = []
    config = load_config(translate_pipeline(tmp_path, src, tgt, {
        "data.max_source_length": 20, "data.max_target_length": 20}))
    from nlpseq.tasks.translate import TranslateTask

    task = TranslateTask(config)
    task.prepare(messages.append)
    assert len(task.train_pairs) == 5
    assert "dropped 1 longer than 20" in messages[0] and "2 with an empty side" in messages[0]


def test_attention_png_is_valid(tmp_path: Path):
    path = tmp_path / "a.png"
    attention_png([[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]], ["▁Ein", "ß", "</s>"], ["x", "</s>"], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = pytest.importorskip("matplotlib.image").imread(path)
    assert image.shape[:2] == (206, 340)  # sizes by token counts: tests/test_plot.py
