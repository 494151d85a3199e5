"""Process-wide settings: the allocator keeps what training frees, and streamed input hands
freed memory back between parts."""

import platform
import subprocess
import sys
from types import SimpleNamespace

import pytest

from nlpseq import runtime

# A training step's pattern: blocks of a few to a few tens of MB, all freed before the next
# step. Prints the page faults of ten such steps with glibc's defaults, then with
# keep_freed_memory.
SCRIPT = """
import resource, torch
from nlpseq.runtime import keep_freed_memory

def faults():
    def step():
        blocks = [torch.ones(mb << 18) for mb in (26, 13, 6, 20)]
        del blocks
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

print(faults())
assert keep_freed_memory()
print(faults())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_freed_blocks_are_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True).stdout.split()
    default, kept = int(out[0]), int(out[1])
    # 65 MB a step: with the defaults every step maps its blocks afresh (about 16,000 faults
    # of 4 KB pages in ten steps); kept, they come back from the heap
    assert default > 5_000
    assert kept < 500


def test_keep_freed_memory_is_safe_to_repeat():
    first = runtime.keep_freed_memory()
    assert runtime.keep_freed_memory() == first


# A fragmented heap: 2,000 blocks of 100 KB, all freed but the last, which keeps the heap from
# shrinking at its top. Prints the resident MB before and after release_freed_memory.
RELEASE = """
import ctypes
from nlpseq import runtime

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20

blocks = [libc.malloc(100_000) for _ in range(2_000)]
for block in blocks:
    libc.memset(block, 1, 100_000)
for block in blocks[:-1]:
    libc.free(block)
print(resident_mb())
runtime.release_freed_memory()
print(resident_mb())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not sys.platform.startswith("linux"),
                    reason="glibc's allocator, /proc")
def test_release_hands_a_fragmented_heap_back():
    out = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True,
                         check=True).stdout.split()
    held, released = int(out[0]), int(out[1])
    assert held - released > 150  # of the 200 MB freed


def test_release_runs_at_most_once_an_interval(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "_glibc", lambda: SimpleNamespace(malloc_trim=calls.append))
    monkeypatch.setattr(runtime, "_released_at", 0.0)
    for _ in range(3):
        runtime.release_freed_memory(interval=3600)
    assert calls == [0]
    runtime.release_freed_memory(interval=0)
    assert calls == [0, 0]


def test_between_parts_releases_after_each_part_is_used(monkeypatch):
    from nlpseq.tasks import base

    events = []
    monkeypatch.setattr(base, "release_freed_memory", lambda: events.append("release"))
    for part in base.between_parts(iter(["a", "b"])):
        events.append(part)
    assert events == ["a", "release", "b", "release"]
