"""numgpt/_malloc.py: freed blocks are reused without new page faults, in the three cases that
gave pages back to the kernel before (a block above the mmap threshold, a heap top above the trim
threshold, a big block in a worker thread), and each case does fault without the tuning.

Each scenario runs in a fresh interpreter, because the settings are per process and must come
before any worker thread allocates. conftest.py puts this checkout on PYTHONPATH.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

SCENARIO = r"""
import json, resource, sys, threading
import numpy as np
from numgpt._malloc import tune_malloc

applied = tune_malloc()

def allocate(kind):
    if kind == "big":            # GPT-2's logits are 103 MB per half batch
        return [np.ones(400 << 17)]                      # one 400 MiB block
    return [np.ones(1 << 17) for _ in range(700)]        # 700 blocks of 1 MiB, 700 MiB in all

def faults_of_second_round(kind):
    # First round: the blocks are new and must fault. Second round: the same sizes again, after a
    # free; only blocks the kernel took back in between fault again.
    del allocate(kind)[:]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = allocate(kind)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del blocks
    return after - before

kind, in_thread = sys.argv[1], sys.argv[2] == "thread"
result = {}
if in_thread:
    worker = threading.Thread(target=lambda: result.update(faults=faults_of_second_round(kind)))
    worker.start()
    worker.join()
else:
    result["faults"] = faults_of_second_round(kind)
print(json.dumps({"applied": applied, "faults": result["faults"]}))
"""

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def run_scenario(kind, where, tuning):
    env = {**os.environ, "NUMGPT_MALLOC_TUNING": "1" if tuning else "0"}
    out = subprocess.run([sys.executable, "-c", SCENARIO, kind, where], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind, where", [("big", "main"), ("many", "main"), ("big", "thread")],
                         ids=["block above the mmap threshold", "heap top above the old trim threshold",
                              "big block in a worker thread"])
def test_freed_blocks_are_reused_without_page_faults(kind, where):
    tuned = run_scenario(kind, where, tuning=True)
    assert tuned["applied"] is GLIBC
    untuned = run_scenario(kind, where, tuning=False)
    assert untuned["applied"] is False
    if GLIBC:
        # Negative control: without the tuning the same allocations fault again. 400 MiB is 200
        # faults with 2 MiB transparent huge pages and 102,400 with 4 KiB pages; 700 MiB 350 or 179,200.
        assert untuned["faults"] >= 180, untuned
        assert tuned["faults"] <= 32, tuned      # measured 0; room for the interpreter's own pages


def test_tuning_can_be_turned_off_but_not_undone(monkeypatch):
    import numgpt._malloc as M

    monkeypatch.setenv("NUMGPT_MALLOC_TUNING", "0")
    monkeypatch.setattr(M, "_done", False)
    assert M.tune_malloc() is False
    assert M._done is False
    # Settings already applied in this process stay applied (mallopt has no undo), and say so.
    monkeypatch.setattr(M, "_done", True)
    assert M.tune_malloc() is True
