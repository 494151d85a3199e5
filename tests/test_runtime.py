"""Process-wide settings: the allocator keeps what training frees."""

import platform
import subprocess
import sys

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
