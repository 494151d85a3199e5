"""NER end to end on a tiny CoNLL corpus: reader errors, overfit, save, reload, predict, CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, invoke, write_pipeline

import nlpseq
from nlpseq.config import load_config
from nlpseq.corpora import read_conll
from nlpseq.errors import NlpseqError
from nlpseq.models.tagger import CharCNN, casing
from nlpseq.trainer import train

# IOB1 as in CoNLL-2003: B- only where an entity directly follows one of the same type.
SENTENCES = [
    [("Anna", "NNP", "I-PER"), ("Keller", "NNP", "I-PER"), ("visited", "VBD", "O"),
     ("Lisbon", "NNP", "I-LOC"), (".", ".", "O")],
    [("Helio", "NNP", "I-ORG"), ("Motors", "NNP", "I-ORG"), ("hired", "VBD", "O"),
     ("Marcus", "NNP", "I-PER"), ("Obi", "NNP", "I-PER"), (".", ".", "O")],
    [("Flights", "NNS", "O"), ("from", "IN", "O"), ("Oslo", "NNP", "I-LOC"),
     ("Quito", "NNP", "B-LOC"), ("stopped", "VBD", "O"), (".", ".", "O")],
    [("The", "DT", "O"), ("Valdoran", "JJ", "I-MISC"), ("team", "NN", "O"), ("won", "VBD", "O"),
     ("in", "IN", "O"), ("Kyoto", "NNP", "I-LOC"), (".", ".", "O")],
    [("Rain", "NN", "O"), ("fell", "VBD", "O"), (".", ".", "O")],
    [("Lena", "NNP", "I-PER"), ("joined", "VBD", "O"), ("Northwind", "NNP", "I-ORG"),
     ("Bank", "NNP", "I-ORG"), ("in", "IN", "O"), ("Tallinn", "NNP", "I-LOC"), (".", ".", "O")],
]


def conll_text(sentences=SENTENCES, docstart: bool = True) -> str:
    out = "-DOCSTART- -X- O O\n\n" if docstart else ""
    for sentence in sentences:
        out += "".join(f"{w} {p} I-NP {t}\n" for w, p, t in sentence) + "\n"
    return out


def ner_pipeline(directory: Path, settings: dict | None = None, *,
                 glove: Path | None = None) -> Path:
    """The tiny NER pipeline training and validating on :data:`SENTENCES`; ``glove``: fixed
    3-dimensional pretrained vectors from that file."""
    corpus = directory / "train.conll"
    corpus.write_text(conll_text(), encoding="utf-8")
    vectors = {"embeddings.path": glove, "embeddings.format": "glove",
               "model.embedding_dim": 3, "model.frozen_vectors": True} if glove else {}
    return write_pipeline(directory, "ner", {"train": corpus, "dev": corpus},
                          {**vectors, **(settings or {})})


@dataclass
class Run:
    run_dir: Path
    corpus: Path
    predictions: list


@pytest.fixture(scope="session")
def ner_run(tmp_path_factory) -> Run:
    """A tiny BiLSTM-CRF trained once until it tags its training sentences perfectly."""
    base = tmp_path_factory.mktemp("ner")
    config = load_config(ner_pipeline(base))
    result = train(config, base / "run", log=lambda _m: None, progress=False)
    assert result.metrics["dev"]["f1"] == 100.0, result.history
    tokens = [[w for w, _, _ in s] for s in SENTENCES]
    return Run(base / "run", base / "train.conll", result.task.predict(tokens))


# --- reader --------------------------------------------------------------------------------


def test_read_conll(tmp_path):
    path = tmp_path / "a.conll"
    path.write_text(conll_text(SENTENCES[:3]) + "\n\n", encoding="utf-8")
    data = read_conll(path, scheme="IOB1")
    assert data.tokens[2] == ["Flights", "from", "Oslo", "Quito", "stopped", "."]
    assert data.tags[2][3] == "B-LOC"
    assert data.lines == [3, 9, 16]
    # another column as the tag
    chunks = read_conll(path, tag_column=2)
    assert chunks.tags[0] == ["I-NP"] * 5


@pytest.mark.parametrize("text, line, fragment", [
    ("EU NNP I-ORG\nrejects VBZ\n", 2, "2 columns"),
    ("EU NNP I-ORG\n\nrejects VBZ X-ORG\n", 3, "not in scheme"),
    ("EU NNP I-ORG\nrejects VBZ E-ORG\n", 2, "not in scheme"),
    ("EU\nrejects\n", 1, "at least 2 columns"),
])
def test_read_conll_errors_name_the_line(tmp_path, text, line, fragment):
    path = tmp_path / "bad.conll"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(NlpseqError) as info:
        read_conll(path, scheme="IOB2")
    assert f"{path}:{line}:" in str(info.value) and fragment in str(info.value)


def test_read_conll_without_sentences(tmp_path):
    path = tmp_path / "empty.conll"
    path.write_text("-DOCSTART- -X- O O\n\n\n", encoding="utf-8")
    with pytest.raises(NlpseqError, match="no sentences"):
        read_conll(path)
    with pytest.raises(NlpseqError, match="column 5 does not exist"):
        path.write_text("a b O\n", encoding="utf-8")
        read_conll(path, tag_column=5)


def test_casing_and_char_cnn_ignore_padding():
    assert [casing(t) for t in ["1996", "1996-08-22", "the", "EU", "Anna", "(1)", "-"]] == [
        1, 2, 3, 4, 5, 6, 7]
    # casing skips counting digits in a word of letters: no character is both
    assert not any(c.isalpha() and c.isdigit() for c in map(chr, range(0x110000)))
    torch.manual_seed(0)
    cnn = CharCNN(10, 4, 6, 3)
    word = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[3, 4, 5, 0, 0], [0, 0, 0, 0, 0]])
    out = cnn(padded)
    assert torch.allclose(cnn(word)[0], out[0], atol=1e-6)
    assert out[1].abs().max() == 0  # the padding word


# --- training, saving, reloading, predicting ----------------------------------------------


def test_overfits_and_reloads_with_identical_predictions(ner_run):
    gold = [[t for _, _, t in s] for s in SENTENCES]
    assert ner_run.predictions == gold  # predicted back in IOB1, B-LOC included
    predictor = nlpseq.load(ner_run.run_dir)
    tokens = [[w for w, _, _ in s] for s in SENTENCES]
    assert predictor.predict(tokens) == gold
    # strings are split on whitespace; spans are (type, start, end exclusive, text)
    spans = predictor.predict(["Flights from Oslo Quito stopped ."], spans=True)[0]
    assert spans == [
        {"type": "LOC", "start": 2, "end": 3, "text": "Oslo"},
        {"type": "LOC", "start": 3, "end": 4, "text": "Quito"},
    ]
    # one sentence alone gets the same tags as in a batch; empty sentences give no tags
    assert predictor.predict([tokens[3], []]) == [gold[3], []]
    with pytest.raises(TypeError, match="list of texts"):
        predictor.predict("Flights from Oslo")


def test_a_token_holding_whitespace_is_one_unknown_word(ner_run):
    """Tokens given as lists may hold spaces; each still gets exactly one word id, so the
    features of the tokens after it stay theirs."""
    predictor = nlpseq.load(ner_run.run_dir)
    plain = predictor._featurize(["", "Oslo", "Quito"])
    spaced = predictor._featurize(["", "New York", "Oslo", "Quito"])
    assert spaced["ids"].tolist() == [0, 1, *plain["ids"][1:].tolist()]
    width = plain["chars"].shape[1]
    assert torch.equal(spaced["chars"][2:, :width], plain["chars"][1:])
    assert spaced["char_lengths"].tolist() == [0, 8, 4, 5]
    assert len(predictor.predict([["Flights", "New York", "Oslo"]])[0]) == 3


def test_unknown_words_and_characters_do_not_crash(ner_run):
    predictor = nlpseq.load(ner_run.run_dir)
    tags = predictor.predict(["Ωmega Зорк visited 東京 with ßtraße ."])[0]
    assert len(tags) == 7 and all(t == "O" or t[:2] in ("I-", "B-") for t in tags)


def test_cli_evaluate_json(ner_run):
    result = invoke("evaluate", ner_run.run_dir, ner_run.corpus, "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    for key in ("f1", "precision", "recall", "per_type", "n_sentences"):
        assert key in metrics
    assert metrics["f1"] == 100.0 and metrics["n_sentences"] == len(SENTENCES)
    assert metrics["per_type"]["LOC"]["support"] == 5


def test_cli_predict_conll_and_plain_text(ner_run, tmp_path):
    result = invoke("predict", ner_run.run_dir, "--input", ner_run.corpus)
    assert result.exit_code == 0, result.output
    blocks = result.stdout.rstrip("\n").split("\n\n")
    assert len(blocks) == len(SENTENCES)
    for block, sentence in zip(blocks, SENTENCES):
        assert block.splitlines() == [f"{w}\t{t}" for w, _, t in sentence]
    plain = "\n".join(" ".join(w for w, _, _ in s) for s in SENTENCES[:2]) + "\n"
    # plain text is answered in BIO, whatever scheme the training files were written in
    result = invoke("predict", ner_run.run_dir, input=plain)
    assert result.exit_code == 0, result.output
    assert result.stdout.split("\n\n")[1].splitlines()[:2] == ["Helio\tB-ORG", "Motors\tI-ORG"]
    result = invoke("predict", ner_run.run_dir, "--json", input=plain)
    first = json.loads(result.stdout.splitlines()[0])
    assert first["tags"][:2] == ["B-PER", "I-PER"]
    assert first["spans"][0] == {"text": "Anna Keller", "type": "PER", "start": 0, "end": 2}
    # --format overrides the guess: the same CoNLL file read as text is one "sentence" per
    # line, each line's columns its words; and plain text read as CoNLL is one sentence.
    as_text = invoke("predict", ner_run.run_dir, "--input", ner_run.corpus, "--format", "text")
    assert as_text.exit_code == 0, as_text.output
    first_line = ner_run.corpus.read_text(encoding="utf-8").splitlines()[0].split()
    assert [row.split("\t")[0] for row in as_text.stdout.split("\n\n")[0].splitlines()] == \
        first_line
    as_conll = invoke("predict", ner_run.run_dir, "--format", "conll",
                      input="Helio\nMotors\n\nBerlin\n")
    assert as_conll.exit_code == 0, as_conll.output
    assert [b.count("\n") + 1 for b in as_conll.stdout.strip().split("\n\n")] == [2, 1]


def test_cli_bad_input(ner_run, tmp_path):
    bad = tmp_path / "bad.conll"
    bad.write_text("EU NNP I-NP I-ORG\nrejects VBZ I-VP\n", encoding="utf-8")
    assert_one_line_error(invoke("evaluate", ner_run.run_dir, bad), f"{bad}:2:", "columns")
    bad.write_text("EU NNP I-NP I-ORG\nrejects VBZ I-VP S-ORG\n", encoding="utf-8")
    assert_one_line_error(invoke("evaluate", ner_run.run_dir, bad), f"{bad}:2:", "S-ORG")
    bad.write_text("-DOCSTART- -X- O O\n\n", encoding="utf-8")
    assert_one_line_error(invoke("evaluate", ner_run.run_dir, bad), str(bad), "no sentences")
    conll = "-DOCSTART- -X- O O\n\nEU NNP I-ORG\nrejects VBZ\n"
    assert_one_line_error(invoke("predict", ner_run.run_dir, input=conll), "input:4:", "columns")



def test_cli_evaluate_unknown_entity_type(ner_run, tmp_path):
    # IOB1 B-PER (a PER right after a PER) never occurs in training but its type does
    ok = tmp_path / "ok.conll"
    ok.write_text("Anna NNP I-NP I-PER\nLena NNP I-NP B-PER\nvisited VBD I-VP O\n\n",
                  encoding="utf-8")
    result = invoke("evaluate", ner_run.run_dir, ok, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["per_type"]["PER"]["support"] == 2
    bad = tmp_path / "bad.conll"
    bad.write_text("-DOCSTART- -X- O O\n\nAnna NNP I-NP I-PER\n\nEU NNP I-NP O\n"
                   "Acme NNP I-NP B-ORG\nWidgets NNP I-NP I-FOO\n", encoding="utf-8")
    assert_one_line_error(invoke("evaluate", ner_run.run_dir, ok, bad), f"{bad}:7:",
                          "unknown tag 'I-FOO'", "(known: O, B-LOC, I-LOC, B-MISC, I-MISC,")


def test_cli_evaluate_damaged_gzip_and_directory(ner_run, tmp_path):
    import gzip

    cut = tmp_path / "cut.conll.gz"
    cut.write_bytes(gzip.compress(conll_text().encode())[:100])
    assert_one_line_error(invoke("evaluate", ner_run.run_dir, cut), f"{cut}", "ends early")
    plain = tmp_path / "plain.conll.gz"
    plain.write_text(conll_text(), encoding="utf-8")
    assert_one_line_error(invoke("evaluate", ner_run.run_dir, plain),
                          f"{plain}: not a valid gzip file")
    assert_one_line_error(invoke("evaluate", ner_run.run_dir, tmp_path),
                          f"{tmp_path}: is a directory, not a data file")


@pytest.mark.parametrize("output, char_encoder, lazy", [
    ("softmax", "lstm", False), ("crf", "none", True)])
def test_other_outputs_and_char_encoders_learn(tmp_path, output, char_encoder, lazy):
    config = load_config(ner_pipeline(tmp_path, {
        "model.output": output, "model.char_encoder": char_encoder, "train.epochs": 30,
        "embeddings.lazy_updates": lazy}))
    result = train(config, tmp_path / "run", log=lambda _m: None, progress=False)
    assert result.metrics["dev"]["f1"] >= 90.0, result.history


def test_fixed_pretrained_vectors_reach_unseen_words(tmp_path, glove_file):
    config = load_config(ner_pipeline(tmp_path, {"train.epochs": 2}, glove=glove_file))
    result = train(config, tmp_path / "run", log=lambda _m: None, progress=False)
    assert (tmp_path / "run" / "vectors.safetensors").is_file()
    predictor = nlpseq.load(tmp_path / "run")
    encoder = predictor.model.encoder
    # the file's words outside the training vocabulary: film, Paris, good, 0000 ("the" trains)
    assert encoder.fixed_vectors.shape == (4, 3)
    assert not any("fixed_vectors" in key for key in predictor.model.state_dict())
    # "film" never occurs in training, yet "Film" finds its pretrained vector (the tokenizer
    # lowercases); a word the file lacks is <unk>
    table = predictor._table(
        type(result.task.dev_data)([["Film", "zzz"]], None, [1], "x"), with_tags=False
    )
    ids = table.collate([0]).ids
    assert ids[0, 0] >= predictor.trained_vocab_size and ids[0, 1] == 1
    vectors = encoder.embed(ids)[0]
    assert vectors[0].tolist() == pytest.approx([0.4, 0.5, 0.6])
    assert torch.equal(encoder.fixed_vectors, result.task.model.encoder.fixed_vectors)


@pytest.mark.parametrize("extend, rows", [(0, 0), (2, 1)])
def test_extend_vocab_counts_fixed_words_when_frozen_vectors_is_off(tmp_path, glove_file,
                                                                    extend, rows):
    # model.frozen_vectors means the whole file; off, embeddings.extend_vocab says how many
    # of its first words join ("the", "film": only "film" is new)
    config = load_config(ner_pipeline(tmp_path, {
        "train.epochs": 1, "model.frozen_vectors": False, "embeddings.extend_vocab": extend},
        glove=glove_file))
    result = train(config, tmp_path / "run", log=lambda _m: None, progress=False)
    fixed = result.task.model.encoder.fixed_vectors
    assert (0 if fixed is None else len(fixed)) == rows
    assert (tmp_path / "run" / "vectors.safetensors").is_file() == bool(rows)


def test_demo_pipeline_trains_and_serves(tmp_path, monkeypatch):
    """pipelines/ner.yaml on the bundled corpus, shortened; then evaluate and predict."""
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)  # the pipeline names its corpus relative to the repository
    run = tmp_path / "demo"
    result = invoke("train", "pipelines/ner.yaml", "--out", run, "--quiet",
                    "--set", "train.epochs=2", "--set", "train.threads=1")
    assert result.exit_code == 0, result.output
    result = invoke("evaluate", run, "corpora/ner/dev.txt", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_sentences"] == 60
    result = invoke("predict", run, "--input", "corpora/ner/dev.txt")
    assert result.exit_code == 0, result.output
    dev = read_conll(root / "corpora/ner/dev.txt")
    blocks = result.stdout.rstrip("\n").split("\n\n")
    assert [[line.split("\t")[0] for line in b.splitlines()] for b in blocks] == dev.tokens


def test_cli_evaluate_reads_in_blocks_with_the_same_figures(ner_run, tmp_path, monkeypatch):
    """Two files tagged a block of a few lines at a time: the span counts of both, summed."""
    from nlpseq import corpora

    second = tmp_path / "second.conll"
    second.write_text(conll_text(SENTENCES[:2]), encoding="utf-8")
    whole = invoke("evaluate", ner_run.run_dir, ner_run.corpus, second, "--json")
    monkeypatch.setattr(corpora, "BLOCK", 4)
    parts = invoke("evaluate", ner_run.run_dir, ner_run.corpus, second, "--json")
    assert whole.exit_code == parts.exit_code == 0, whole.output + parts.output
    assert json.loads(parts.stdout) == json.loads(whole.stdout)
    assert json.loads(whole.stdout)["n_sentences"] == len(SENTENCES) + 2
