"""nlpseq: recurrent neural networks for text, configured by YAML pipelines.

>>> import nlpseq
>>> predictor = nlpseq.load("runs/sentiment")        # doctest: +SKIP
>>> predictor.predict(["a gripping , funny film"])   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from nlpseq.tasks.base import Task


def load(run_dir: str | Path, device: str = "cpu") -> Task:
    """Load a trained run directory; the returned task object predicts with its model."""
    from nlpseq.checkpoint import WEIGHTS, RunDir
    from nlpseq.config import load_config
    from nlpseq.runtime import resolve_device
    from nlpseq.tasks import task_class

    run = RunDir(run_dir)
    run.check_readable()
    config = load_config(run.config)
    return task_class(config.task).from_run(run.path, config, run.file(WEIGHTS),
                                            resolve_device(device))


def train(pipeline: str | Path, out_dir: str | Path, overrides: tuple[str, ...] = ()):
    """Train a pipeline YAML file into ``out_dir`` (see :func:`nlpseq.trainer.train`)."""
    from nlpseq.config import load_config
    from nlpseq.trainer import train as run

    return run(load_config(pipeline, overrides), out_dir)
