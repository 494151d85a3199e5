"""nlpseq: recurrent neural networks for text, configured by YAML pipelines.

>>> import nlpseq
>>> predictor = nlpseq.load("runs/sentiment")        # doctest: +SKIP
>>> predictor.predict(["a gripping , funny film"])   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import optuna

    from nlpseq.tasks.base import Task


def load(run_dir: str | Path, device: str = "cpu", backend: str = "torch") -> Task:
    """Load a trained run directory; the returned task object predicts with its model.

    ``backend``: ``torch`` (the model as trained), ``onnx`` (ONNX Runtime on the graphs in
    ``RUN_DIR/onnx/``, exported on first use), ``int8`` (dynamically quantized at load time;
    these two run on the CPU) or ``bf16`` (bfloat16 matrix products, where the device
    computes them natively); see :mod:`nlpseq.backends`.
    """
    from nlpseq.backends import apply_backend
    from nlpseq.checkpoint import WEIGHTS, RunDir
    from nlpseq.config import load_config
    from nlpseq.runtime import resolve_device
    from nlpseq.tasks import task_class

    run = RunDir(run_dir)
    run.check_readable()
    config = load_config(run.config)
    weights = run.file(WEIGHTS)
    task = task_class(config.task).from_run(run.path, config, weights, resolve_device(device))
    return apply_backend(task, backend, run.path, weights)


def train(pipeline: str | Path, out_dir: str | Path, overrides: tuple[str, ...] = ()):
    """Train a pipeline YAML file into ``out_dir`` (see :func:`nlpseq.trainer.train`)."""
    from nlpseq.config import load_config
    from nlpseq.trainer import train as run

    return run(load_config(pipeline, overrides), out_dir)


def tune(pipeline: str | Path, out_dir: str | Path, trials: int | None = None,
         minutes: float | None = None, storage: str | None = None,
         overrides: tuple[str, ...] = (), **options: Any) -> optuna.Study:
    """Search a pipeline's hyperparameters with Optuna into the study folder ``out_dir``;
    returns the study (see :func:`nlpseq.tuning.tune` for the options)."""
    from nlpseq.tuning import tune as search

    return search(pipeline, out_dir, trials, minutes, storage, overrides, **options)
