"""Real-corpus acceptance run (slow: not part of `make test`; run with `pytest -m slow`)."""

from pathlib import Path

import pytest
from helpers import CORPORA, ROOT

from nlpseq.config import load_config
from nlpseq.trainer import train


@pytest.mark.slow
@pytest.mark.skipif(not Path(CORPORA, "textgen", "tinyshakespeare").is_dir(),
                    reason="needs Tiny Shakespeare")
def test_tiny_shakespeare_reaches_1_47_nats_per_char_in_15_minutes(tmp_path, monkeypatch):
    monkeypatch.setenv("NLPSEQ_CORPORA", CORPORA)
    config = load_config(ROOT / "pipelines" / "chargen-shakespeare.yaml",
                         ["train.max_minutes=15"])
    result = train(config, tmp_path / "run", progress=False)
    assert result.metrics["dev"]["loss"] <= 1.47
