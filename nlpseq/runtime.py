"""Process-wide pieces every command shares: devices, seeds, messages on stderr."""

from __future__ import annotations

import ctypes
import functools
import random
import sys
import time

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


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc (musl's mallopt and malloc_trim do nothing)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- glibc only
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Have glibc's allocator keep freed memory for reuse instead of handing it back to the OS.

    A training step allocates and frees the same tens of megabytes (what the forward pass saves
    for the backward one). With glibc's defaults, blocks of a few megabytes are mapped and
    unmapped every step and each fresh page faults and is zeroed: on CPU that cost a character
    LM 16-19% of its step time. Here blocks up to 32 MB (glibc's ceiling) come from the heap,
    and up to 1 GB of free heap is kept. False where the C library is not glibc.
    """
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and \
        bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))


_released_at = 0.0  # time.monotonic() of the last release_freed_memory


def release_freed_memory(interval: float = 1.0) -> None:
    """Hand the free memory glibc's allocator holds back to the OS (malloc_trim), at most once
    every ``interval`` seconds, so that pages touched again afterwards cost little.

    Called between the parts of a streamed input: tensors of changing sizes leave free blocks
    scattered through the heap, which the allocator keeps, and a process's resident size would
    creep up part after part over a long input. Nothing where the C library is not glibc.
    """
    global _released_at
    libc = _glibc()
    if libc is None or time.monotonic() - _released_at < interval:
        return
    libc.malloc_trim(0)
    _released_at = time.monotonic()
