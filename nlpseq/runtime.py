"""Process-wide pieces every command shares: devices, seeds, messages on stderr."""

from __future__ import annotations

import random
import sys

import numpy as np
import torch

from nlpseq.errors import NlpseqError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``; anything else, or CUDA where
    there is none, is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and name != "cuda" and not name.startswith("cuda:"):
        raise NlpseqError(f"device {name!r}: expected auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NlpseqError(f"device {name!r}: no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def log_stderr(message: str) -> None:
    """The default log: one line on stderr, flushed (progress and warnings)."""
    print(message, file=sys.stderr, flush=True)
