"""Helper for test_ddp.py, run by ``torchrun --nproc_per_node 2``: trains a pipeline and saves,
per rank, the initial weights, the weights training ended with (before the best checkpoint is
reloaded), the best weights, and the ids of this rank's first training batch.

usage: ddp_train.py PIPELINE RUN_DIR DUMP_DIR
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import nlpseq.trainer as trainer
from nlpseq import checkpoint as ckpt
from nlpseq.config import load_config


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def main() -> None:
    pipeline, run_dir, dump = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    rank = int(os.environ["RANK"])
    load_weights = ckpt.load_weights

    def dump_then_load(module: torch.nn.Module, path) -> None:
        # The trainer reloads the best checkpoint (written by rank 0) at the end: keep what
        # this rank's own training produced first, or identical weights would prove nothing.
        save_file(state(module), str(dump / f"final-rank{rank}.safetensors"))
        load_weights(module, path)

    make_optimizer = trainer.make_optimizer

    def record_init(module: torch.nn.Module, config):
        save_file(state(module), str(dump / f"init-rank{rank}.safetensors"))
        return make_optimizer(module, config)

    ckpt.load_weights = dump_then_load
    trainer.make_optimizer = record_init
    result = trainer.train(load_config(pipeline), run_dir, progress=False)
    save_file(state(result.task.model), str(dump / f"best-rank{rank}.safetensors"))
    first = result.task.train_batches(0, rank, int(os.environ["WORLD_SIZE"]))[0]
    (dump / f"batch-rank{rank}.json").write_text(json.dumps(first.ids.tolist()))


if __name__ == "__main__":
    main()
