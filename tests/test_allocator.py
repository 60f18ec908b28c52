"""medcodec.allocator: the entry points' glibc and numpy settings, and the switch that turns them off."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Both calls' results, then whether numpy still madvises huge pages afterwards.
PROBE = ("import json; from medcodec import allocator; "
         "print(json.dumps([allocator.tune(), allocator.tune(), allocator._numpy_huge_pages(True)]))")


def _run(env_value: str | None, **extra_env: str) -> list:
    env = {k: v for k, v in os.environ.items() if k not in ("MEDARCHIVE_MALLOC", "NUMPY_MADVISE_HUGEPAGE")}
    if env_value is not None:
        env["MEDARCHIVE_MALLOC"] = env_value
    env.update(extra_env)
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_tune_sets_the_thresholds_once_and_can_be_turned_off():
    from medcodec import allocator

    glibc = {"mmap_threshold": allocator.MMAP, "trim_threshold": allocator.TRIM, "top_pad": allocator.TOP_PAD,
             "arena_max": allocator.ARENAS}
    first, again, huge_pages = _run(None)
    assert first == again == {"numpy_hugepage": False, **glibc} and huge_pages is False
    # numpy's own switch, when set, is followed; the glibc settings still apply
    first, _, huge_pages = _run(None, NUMPY_MADVISE_HUGEPAGE="1")
    assert first == glibc and huge_pages is True
    assert _run("default") == [{}, {}, True]


def test_the_readme_snippet_runs_after_import_medcodec():
    """`import medcodec; medcodec.allocator.tune()` (README) works, and importing tunes nothing."""
    code = "import medcodec; assert not medcodec.allocator._done; medcodec.allocator.tune(); print('ok')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# How many arenas glibc holds before and after a new thread allocates (malloc_info's heaps).
ARENA_PROBE = """
import ctypes, ctypes.util, json, os, tempfile, threading
from medcodec import allocator
allocator.tune()
import numpy as np
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
def arenas():
    fd, path = tempfile.mkstemp(); os.close(fd)
    fp = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(fp)); libc.fclose(ctypes.c_void_p(fp))
    n = open(path).read().count("<heap nr="); os.unlink(path)
    return n
before = arenas()
kept = []
thread = threading.Thread(target=lambda: kept.append(np.ones(1 << 20)))  # 8 MB from the new thread
thread.start(); thread.join()
print(json.dumps([before, arenas()]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc settings")
def test_threads_started_after_tune_allocate_from_the_main_arena():
    """A thread started after tune() takes no arena of its own (glibc's default gives it one)."""
    def arenas(env_value):
        env = {k: v for k, v in os.environ.items() if k != "MEDARCHIVE_MALLOC"}
        if env_value is not None:
            env["MEDARCHIVE_MALLOC"] = env_value
        res = subprocess.run([sys.executable, "-c", ARENA_PROBE], capture_output=True, text=True, cwd=REPO, env=env,
                             timeout=60)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)

    before, after = arenas(None)
    assert after == before
    before, after = arenas("default")
    assert after == before + 1
