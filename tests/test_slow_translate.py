"""Real-corpus acceptance run (slow: not part of `make test`; run with `pytest -m slow`)."""

from pathlib import Path

import pytest
from helpers import CORPORA, ROOT

from nlpseq.config import load_config
from nlpseq.trainer import train

MULTI30K = Path(CORPORA, "translation", "multi30k")


@pytest.mark.slow
@pytest.mark.skipif(not MULTI30K.is_dir(), reason="needs Multi30k")
def test_multi30k_en_de_reaches_28_val_bleu_in_30_minutes(tmp_path, monkeypatch):
    monkeypatch.setenv("NLPSEQ_CORPORA", CORPORA)
    config = load_config(ROOT / "pipelines" / "translate-multi30k.yaml", ["train.max_minutes=30"])
    result = train(config, tmp_path / "run", progress=False)
    scores = result.task.evaluate_files(
        [str(MULTI30K / "val.en.gz"), str(MULTI30K / "val.de.gz")], beam=5
    )
    assert scores["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert scores["bleu"] >= 28.0
