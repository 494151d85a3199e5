"""Process-wide pieces every command shares: devices, seeds, messages on stderr."""

from __future__ import annotations

import ctypes
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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Have glibc's allocator keep freed memory for reuse instead of handing it back to the OS.

    A training step allocates and frees the same tens of megabytes (what the forward pass saves
    for the backward one). With glibc's defaults, blocks of a few megabytes are mapped and
    unmapped every step and each fresh page faults and is zeroed: on CPU that cost a character
    LM 16-19% of its step time. Here blocks up to 32 MB (glibc's ceiling) come from the heap,
    and up to 1 GB of free heap is kept. False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only: musl's mallopt does nothing
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
