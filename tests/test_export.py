"""ONNX export and the onnx / int8 / bf16 backends: the same outputs as the torch model.

Tiny runs of each task are trained once per module; equivalence does not depend on how well
a model is trained, only on the graphs computing what the torch model computes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from helpers import invoke, sentences, write_pipeline, write_tsv

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import nlpseq  # noqa: E402
from nlpseq.backends import PaddedRecurrentLayer, viterbi_numpy  # noqa: E402
from nlpseq.config import load_config  # noqa: E402
from nlpseq.errors import NlpseqError  # noqa: E402
from nlpseq.models.crf import LinearChainCRF  # noqa: E402
from nlpseq.models.encoder import RecurrentEncoder  # noqa: E402
from nlpseq.tagschemes import allowed_transitions  # noqa: E402
from nlpseq.trainer import train  # noqa: E402

NER_TEXT = """\
Anna NNP I-NP I-PER
Keller NNP I-NP I-PER
visited VBD I-VP O
Lisbon NNP I-NP I-LOC
. . O O

Helio NNP I-NP I-ORG
Motors NNP I-NP I-ORG
hired VBD I-VP O
Marcus NNP I-NP I-PER
. . O O

Rain NN I-NP O
fell VBD I-VP O
in IN I-PP O
Oslo NNP I-NP I-LOC
. . O O
"""
VERSE = "row to the light,\nkeep left of the bell;\nthe steps are wet.\n" * 6
PAIRS = [("The man is running.", "Der Mann läuft."), ("The dog is sleeping.", "Der Hund schläft."),
         ("The cat is eating.", "Die Katze isst."), ("The child is singing.", "Das Kind singt."),
         ("The woman is running.", "Die Frau läuft."), ("The man is eating.", "Der Mann isst.")]
TEXTS = ["the film is very good", "the cast is awful", "zzz unseen words here", "",
         "a", "the plot is dull and the cast is flat and boring but the film is good"]


def _train(base: Path, task: str, data: dict, settings: dict) -> Path:
    config = load_config(write_pipeline(base, task, data, settings))
    train(config, base / "run", log=lambda _m: None, progress=False)
    return base / "run"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One briefly trained run per task (read-only for the tests)."""
    out = {}
    base = tmp_path_factory.mktemp("sentiment")
    tsv = write_tsv(base / "train.tsv", sentences(1, 24))
    out["sentiment"] = _train(base, "sentiment", {"train": tsv, "dev": tsv},
                              {"train.epochs": 2})
    base = tmp_path_factory.mktemp("long")
    tsv = write_tsv(base / "train.tsv", sentences(1, 24))
    out["sentiment-long"] = _train(base, "sentiment", {"train": tsv, "dev": tsv}, {
        "train.epochs": 2, "model.chunk_length": 3, "model.ngram_buckets": 97,
        "model.ngram_order": 3, "model.pooling": "max-mean"})
    base = tmp_path_factory.mktemp("ner")
    (base / "train.conll").write_text(NER_TEXT, encoding="utf-8")
    conll = base / "train.conll"
    out["ner"] = _train(base, "ner", {"train": conll, "dev": conll}, {"train.epochs": 4})
    base = tmp_path_factory.mktemp("chargen")
    (base / "text.txt").write_text(VERSE, encoding="utf-8")
    out["chargen"] = _train(base, "chargen", {"train": base / "text.txt"},
                            {"train.epochs": 4})
    base = tmp_path_factory.mktemp("translate")
    for name, side in (("src.en", 0), ("tgt.de", 1)):
        (base / name).write_text("".join(p[side] + "\n" for p in PAIRS), encoding="utf-8")
    data = {"train": base / "src.en", "train_target": base / "tgt.de",
            "dev": base / "src.en", "dev_target": base / "tgt.de"}
    out["translate"] = _train(base, "translate", data, {"train.epochs": 6,
                                                         "model.cell": "lstm"})
    return out


@pytest.mark.parametrize("task", ["sentiment", "ner", "chargen", "translate"])
def test_export_writes_checked_graphs_with_dynamic_axes(runs, task, tmp_path):
    result = invoke("export", runs[task], "--format", "onnx", "--out", tmp_path / "graphs")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "graphs" / "meta.json").read_text())
    assert meta["task"] == task and meta["graphs"]
    for name in meta["graphs"]:
        graph = onnx.load(str(tmp_path / "graphs" / name))
        onnx.checker.check_model(graph, full_check=True)
        first = graph.graph.input[0].type.tensor_type.shape.dim
        assert first[0].dim_param, f"{name}: batch axis is fixed"
        assert meta["max_abs_difference"][name] < 1e-4


@pytest.mark.parametrize("run", ["sentiment", "sentiment-long"])
def test_onnx_sentiment_labels_and_probabilities_match_torch(runs, run):
    """Also with chunks and n-grams (sentiment-long), over texts longer and shorter than a
    chunk and than the graph's example."""
    torch_task = nlpseq.load(runs[run])
    onnx_task = nlpseq.load(runs[run], backend="onnx")
    expected, got = torch_task.predict(TEXTS), onnx_task.predict(TEXTS)
    assert [e["label"] for e in expected] == [g["label"] for g in got]
    for e, g in zip(expected, got):
        for label, p in e["probabilities"].items():
            assert g["probabilities"][label] == pytest.approx(p, abs=1e-4)


def test_onnx_ner_tags_match_torch(runs):
    sentences_ = [line.split() for line in TEXTS] + [["Anna", "visited", "Oslo", "."]]
    torch_task = nlpseq.load(runs["ner"])
    assert nlpseq.load(runs["ner"], backend="onnx").predict(sentences_) == \
        torch_task.predict(sentences_)


def test_numpy_viterbi_equals_the_crf_on_constrained_random_scores():
    tags = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
    crf = LinearChainCRF(len(tags), *allowed_transitions(tags, "BIOES"))
    torch.manual_seed(2)
    for scores in crf.parameters():
        torch.nn.init.normal_(scores)
    emissions = torch.randn(5, 7, len(tags), generator=torch.Generator().manual_seed(3))
    mask = torch.arange(7).unsqueeze(0) < torch.tensor([7, 5, 1, 3, 7]).unsqueeze(1)
    assert viterbi_numpy(crf, emissions.numpy(), mask.numpy()) == crf.viterbi(emissions, mask)


def test_onnx_chargen_greedy_generation_and_scores_match_torch(runs):
    torch_task = nlpseq.load(runs["chargen"])
    onnx_task = nlpseq.load(runs["chargen"], backend="onnx")
    for prompt in ("", "keep ", "the steps"):
        assert onnx_task.generate(prompt, 60, temperature=0) == \
            torch_task.generate(prompt, 60, temperature=0)
    texts = ["row to the light", "the bell"]
    for e, g in zip(torch_task.predict(texts), onnx_task.predict(texts)):
        assert g["loss"] == pytest.approx(e["loss"], abs=1e-4)


def test_onnx_greedy_translation_and_loss_match_torch(runs, tmp_path):
    torch_task = nlpseq.load(runs["translate"])
    onnx_task = nlpseq.load(runs["translate"], backend="onnx")
    sources = [s for s, _ in PAIRS] + ["The dog is singing.", ""]
    assert onnx_task.translate(sources, beam=1) == torch_task.translate(sources, beam=1)
    src, ref = tmp_path / "src.en", tmp_path / "ref.de"
    src.write_text("".join(s + "\n" for s, _ in PAIRS), encoding="utf-8")
    ref.write_text("".join(t + "\n" for _, t in PAIRS), encoding="utf-8")
    expected = torch_task.evaluate_files([str(src), str(ref)], beam=1)
    got = onnx_task.evaluate_files([str(src), str(ref)], beam=1)
    assert got["bleu"] == expected["bleu"]
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-4)


def test_graphs_of_other_weights_are_refused(runs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(runs["sentiment"], run)
    nlpseq.load(run, backend="onnx")  # exports into run/onnx
    meta = run / "onnx" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "weights_sha256": "0" * 64}))
    with pytest.raises(NlpseqError, match="other weights"):
        nlpseq.load(run, backend="onnx")


def test_padded_layers_equal_the_encoder_they_replace():
    torch.manual_seed(0)
    for cell in ("lstm", "gru"):
        encoder = RecurrentEncoder(30, 6, 5, cell=cell, layers=2).eval()
        ids = torch.randint(1, 30, (4, 7))
        lengths = torch.tensor([7, 3, 1, 5])
        ids = ids.masked_fill(torch.arange(7) >= lengths.unsqueeze(1), 0)
        with torch.no_grad():
            expected = encoder(ids, lengths)
            for index, rnn in enumerate(encoder.layers):
                encoder.layers[index] = PaddedRecurrentLayer(rnn)
            got = encoder(ids, lengths)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, atol=1e-6, rtol=0)


def test_int8_quantizes_at_load_and_writes_nothing(runs):
    before = sorted(p.relative_to(runs["ner"]) for p in runs["ner"].rglob("*"))
    task = nlpseq.load(runs["ner"], backend="int8")
    kinds = {type(m).__module__ for m in task.model.modules()
             if isinstance(m, (torch.nn.LSTM, torch.nn.Linear))}
    assert kinds == set(), kinds  # every LSTM and linear layer was replaced
    assert any("quantized" in type(m).__module__ for m in task.model.modules())
    assert sorted(p.relative_to(runs["ner"]) for p in runs["ner"].rglob("*")) == before
    sentence = [["Anna", "visited", "Oslo", "."]]
    assert len(task.predict(sentence)[0]) == 4


@pytest.mark.parametrize("task", ["sentiment", "sentiment-long", "chargen", "translate"])
def test_int8_runs_every_task(runs, task):
    loaded = nlpseq.load(runs[task], backend="int8")
    if task.startswith("sentiment"):
        assert {r["label"] for r in loaded.predict(TEXTS)} <= set(loaded.names)
    elif task == "chargen":
        assert len(loaded.generate("the ", 20, temperature=0)) == 24
    else:
        assert len(loaded.translate([s for s, _ in PAIRS], beam=2)) == len(PAIRS)


def test_predict_cli_with_each_backend_prints_the_same_in_input_order(runs, tmp_path):
    rng = random.Random(5)
    words = "the film is very good awful dull cast plot lovely".split()
    lines = [" ".join(rng.choices(words, k=rng.randint(0, 30))) for _ in range(2500)]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    outputs = {}
    for backend in ("torch", "onnx"):
        result = invoke("predict", runs["sentiment"], "--input", path, "--backend", backend)
        assert result.exit_code == 0, result.output
        outputs[backend] = result.stdout.splitlines()
    assert outputs["onnx"] == outputs["torch"]
    alone = nlpseq.load(runs["sentiment"])
    for index in rng.sample(range(len(lines)), 20):  # line i's output is line i's label
        assert outputs["torch"][index] == alone.predict([lines[index]])[0]["label"]


def test_translation_streams_its_first_outputs_before_the_input_ends(runs):
    from nlpseq.tasks.base import PREDICT_CHUNK

    task = nlpseq.load(runs["translate"], backend="onnx")
    read = 0

    def lines():
        nonlocal read
        for index in range(10 * PREDICT_CHUNK):
            read += 1
            yield PAIRS[index % len(PAIRS)][0]

    outputs = task.predict_lines(lines(), beam=1)
    first = next(outputs)
    assert first == task.translate([PAIRS[0][0]], beam=1)[0]
    assert read == PREDICT_CHUNK  # one chunk read, not the whole input


def test_ner_reads_long_conll_input_in_blocks_and_keeps_every_sentence(runs):
    task = nlpseq.load(runs["ner"], backend="onnx")
    sentence = ["Anna", "visited", "Oslo", "."]
    lines = []
    for index in range(3000):  # 15,000 lines: more than one block of 10,000
        lines += [f"{word} X I-NP O" for word in sentence[: 1 + index % 4]] + [""]
    lines += ["", ""]  # blank lines after the last block are no sentence
    records = [json.loads(line) for line in
               task.predict_lines(lines, as_json=True, input_format="conll")]
    assert [len(r["tokens"]) for r in records] == [1 + i % 4 for i in range(3000)]
    with pytest.raises(NlpseqError, match="no sentences"):
        list(task.predict_lines([], input_format="conll"))


def test_unknown_backends_are_refused(runs):
    with pytest.raises(NlpseqError, match="expected one of torch, onnx, int8, bf16"):
        nlpseq.load(runs["sentiment"], backend="tensorrt")
    result = invoke("predict", runs["sentiment"], "--backend", "fast")
    assert result.exit_code == 2 and "fast" in result.output


def test_cli_offers_every_backend():
    from nlpseq import backends, cli

    assert cli.BACKENDS == backends.BACKENDS


@pytest.mark.parametrize("task", ["sentiment", "sentiment-long", "ner", "chargen", "translate"])
def test_bf16_gives_the_torch_results_to_bfloat16_precision(runs, task, monkeypatch):
    """The bf16 backend's scores are float32 and within bfloat16 rounding of torch's, its
    labels and tags the same on these runs; it writes nothing into the run directory."""
    from nlpseq import native

    monkeypatch.setattr(native, "bf16_native", lambda _device: True)
    before = sorted(p.relative_to(runs[task]) for p in runs[task].rglob("*"))
    plain, fast = nlpseq.load(runs[task]), nlpseq.load(runs[task], backend="bf16")
    if task.startswith("sentiment"):
        want, got = plain.predict(TEXTS), fast.predict(TEXTS)
        assert [r["label"] for r in got] == [r["label"] for r in want]
        for g, w in zip(got, want):
            for name, p in w["probabilities"].items():
                assert isinstance(g["probabilities"][name], float)
                assert g["probabilities"][name] == pytest.approx(p, abs=2e-2)
        probe = torch.tensor([[4, 5, 6]]), torch.tensor([3])
        with torch.no_grad():
            assert fast.model.logits(*probe).dtype == torch.float32
            assert not torch.equal(fast.model.logits(*probe), plain.model.logits(*probe))
    elif task == "ner":
        sentence = [["Anna", "visited", "Oslo", "."], ["Rain", "fell", "in", "Lisbon", "."]]
        assert fast.predict(sentence) == plain.predict(sentence)
    elif task == "chargen":
        assert fast.model.bf16
        want = plain.predict(["row to the light,"])[0]["loss"]
        assert fast.predict(["row to the light,"])[0]["loss"] == pytest.approx(want, abs=2e-2)
        assert len(fast.generate("the ", 20, temperature=0)) == 24
    else:
        sources = [s for s, _ in PAIRS]
        assert fast.translate(sources, beam=2) == plain.translate(sources, beam=2)
    assert sorted(p.relative_to(runs[task]) for p in runs[task].rglob("*")) == before


def test_bf16_is_refused_where_it_would_be_emulated(runs, monkeypatch):
    from nlpseq import native

    monkeypatch.setattr(native, "bf16_native", lambda _device: False)
    with pytest.raises(NlpseqError, match="bf16 backend needs a device that computes"):
        nlpseq.load(runs["sentiment"], backend="bf16")
    result = invoke("predict", runs["sentiment"], "--backend", "bf16")
    assert result.exit_code == 1 and "bfloat16 natively" in result.output
