"""DistributedDataParallel under torchrun (gloo, CPU): both ranks end with the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write_pipeline
from safetensors.torch import load_file

from nlpseq import checkpoint as ckpt


@pytest.mark.heavy  # two torchrun ranks: 15-20 s each
@pytest.mark.parametrize("lazy", [False, True])  # True: sparse embedding gradients
def test_two_ranks_end_with_identical_weights(tmp_path, corpus, lazy):
    pipeline = write_pipeline(tmp_path, "sentiment", corpus,
                              {"train.epochs": 2, "embeddings.lazy_updates": lazy})
    dump = tmp_path / "dump"
    dump.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(Path(__file__).parent / "ddp_train.py"), str(pipeline), str(tmp_path / "run"),
        str(dump),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]

    # The ranks trained on different batches...
    batches = [json.loads((dump / f"batch-rank{r}.json").read_text()) for r in (0, 1)]
    assert batches[0] != batches[1]
    # ...yet DDP kept their weights identical, both at the end of training and after reloading.
    for kind in ("final", "best"):
        rank0 = load_file(str(dump / f"{kind}-rank0.safetensors"))
        rank1 = load_file(str(dump / f"{kind}-rank1.safetensors"))
        assert rank0.keys() == rank1.keys()
        for key in rank0:
            torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=key)
    # Training changed the weights.
    init = load_file(str(dump / "init-rank0.safetensors"))
    final = load_file(str(dump / "final-rank0.safetensors"))
    assert not torch.equal(init["output.weight"], final["output.weight"])
    # Rank 0 wrote the run directory.
    best = load_file(str(ckpt.RunDir(tmp_path / "run").file(ckpt.WEIGHTS)))
    for key, value in best.items():
        torch.testing.assert_close(value, load_file(str(dump / "best-rank1.safetensors"))[key])
    history = ckpt.RunDir(tmp_path / "run").history()
    assert len(history) == 2
    assert history[0]["step"] == 3  # 6 batches shared by 2 ranks
