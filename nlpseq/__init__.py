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


def _device(name: str):
    """``auto``, ``cpu`` or ``cuda[:N]`` -> torch.device; anything else is a one-line error."""
    import torch

    from nlpseq.errors import NlpseqError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and name != "cuda" and not name.startswith("cuda:"):
        raise NlpseqError(f"device {name!r}: expected auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NlpseqError(f"device {name!r}: no CUDA device is available")
    return torch.device(name)


def load(run_dir: str | Path, device: str = "cpu") -> Task:
    """Load a trained run directory; the returned task object predicts with its model."""
    from nlpseq import checkpoint as ckpt
    from nlpseq.config import load_config
    from nlpseq.tasks import task_class

    device = _device(device)
    run_dir = ckpt.check_run_dir(run_dir)
    config = load_config(run_dir / ckpt.CONFIG)
    task = task_class(config.task)(config)
    task.load_artifacts(run_dir)
    model = task.build_model(lambda _message: None, pretrained=False)
    ckpt.load_weights(model, run_dir / ckpt.WEIGHTS)
    model.eval()
    task.model = model
    return task.to(device)


def train(pipeline: str | Path, out_dir: str | Path, overrides: tuple[str, ...] = ()):
    """Train a pipeline YAML file into ``out_dir`` (see :func:`nlpseq.trainer.train`)."""
    from nlpseq.config import load_config
    from nlpseq.trainer import train as run

    return run(load_config(pipeline, overrides), out_dir)
