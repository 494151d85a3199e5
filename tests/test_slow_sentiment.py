"""Real-corpus acceptance run (slow: not part of `make test`; run with `pytest -m slow`)."""

from pathlib import Path

import pytest
from helpers import CORPORA, ROOT

from nlpseq.config import load_config
from nlpseq.trainer import train


@pytest.mark.slow
@pytest.mark.skipif(not Path(CORPORA, "sentiment", "sst2").is_dir(), reason="needs SST-2")
def test_sst2_reaches_85_dev_accuracy_in_10_minutes(tmp_path, monkeypatch):
    monkeypatch.setenv("NLPSEQ_CORPORA", CORPORA)
    config = load_config(ROOT / "pipelines" / "sentiment-sst2.yaml",
                         ["train.max_minutes=10", "train.threads=0"])
    result = train(config, tmp_path / "run", progress=False)
    assert result.metrics["dev"]["accuracy"] >= 85.0
