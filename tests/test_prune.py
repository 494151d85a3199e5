"""nlpseq prune: structured removal of hidden units gives an ordinary, smaller run."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import PROBES, invoke

import nlpseq
from nlpseq.checkpoint import WEIGHTS, RunDir, save_weights
from nlpseq.errors import NlpseqError
from nlpseq.prune import prune_run


def _silence_units(model: torch.nn.Module, units: range) -> None:
    """Zero every weight into ``units`` of each direction: an LSTM unit whose gate inputs are
    all 0 keeps h = 0 for ever (c = 0.5 c_prev + 0.5 tanh(0) stays 0)."""
    hidden = model.encoder.hidden_size
    with torch.no_grad():
        for rnn in model.encoder.layers:
            for tensor in rnn.parameters():
                for gate in range(tensor.size(0) // hidden):
                    tensor[[gate * hidden + u for u in units]] = 0.0


def test_pruning_silent_units_keeps_the_predictions_exactly(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run.run_dir, run)
    task = nlpseq.load(run)
    hidden = task.config.model.hidden_size
    _silence_units(task.model, range(hidden // 2, hidden))
    save_weights(task.model, RunDir(run).file(WEIGHTS))
    expected = nlpseq.load(run).predict(PROBES)
    result = invoke("prune", run, "--keep", "0.5", "--out", tmp_path / "pruned", check=True)
    assert f'"hidden_size": [{hidden}, {hidden // 2}]' in result.stdout
    pruned = nlpseq.load(tmp_path / "pruned")
    assert pruned.config.model.hidden_size == hidden // 2
    assert pruned.model.encoder.layers[0].weight_hh_l0.shape == (4 * (hidden // 2), hidden // 2)
    for e, g in zip(expected, pruned.predict(PROBES)):
        assert g["label"] == e["label"]
        for label, p in e["probabilities"].items():
            assert g["probabilities"][label] == pytest.approx(p, abs=1e-6)


def test_prune_refuses_bad_ratios_and_used_folders(trained_run, tmp_path):
    with pytest.raises(NlpseqError, match="between 0 and 1"):
        prune_run(trained_run.run_dir, tmp_path / "a", 1.5)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(NlpseqError, match="not empty"):
        prune_run(trained_run.run_dir, tmp_path / "b", 0.5)


def test_prune_can_fine_tune_and_the_result_reloads(trained_run, tmp_path):
    result = prune_run(trained_run.run_dir, tmp_path / "tuned", 0.5, minutes=0.001)
    assert set(result["dev_after_fine_tuning"]) >= {"accuracy", "loss"}
    reloaded = nlpseq.load(tmp_path / "tuned")
    assert reloaded.config.model.hidden_size == result["hidden_size"][1]
    metrics = reloaded.evaluate_files([str(trained_run.corpus["dev"])])
    assert metrics["accuracy"] == pytest.approx(result["dev_after_fine_tuning"]["accuracy"])
