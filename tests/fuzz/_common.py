"""Shared machinery of the fuzz harnesses (tests/fuzz/fuzz_*.py).

Each harness is a standalone atheris (libFuzzer) program: it instruments medcodec and
pydicom, writes its seeds (made at start from pydicom's test files and the golden
records, nothing committed) into a temporary corpus directory, caps its address space,
and then feeds every input to the public readers. A *finding* (see _contract.py: an
untyped exception, memory that ran out, a message that is not one line or quotes input or
key material) stops the run with a crash artifact, as do an input that runs longer than
``-timeout`` seconds (libFuzzer's timeout, 15 s here) and, for the DICOM harness, a
CorruptRecordError from compress_dicom (the record it just wrote does not decode back).

Flags are libFuzzer's (``-atheris_runs=N``, ``-max_total_time=S``, ``-seed=N``,
``-timeout=S``, ``-rss_limit_mb=M``, corpus directories as positional arguments; the
first one receives new inputs), plus ``-medcodec_as_headroom_mb=M`` (address space
allowed above what the loaded harness uses; default 3072) and ``-medcodec_keep_going=1``
(a campaign: each distinct finding is printed and its input saved once, the tally kept in
``<artifact_prefix>findings.txt``, and fuzzing goes on) and ``-medcodec_strict=1`` (also
report the foreign exceptions that only a catch-all boundary typed, with where they were
raised) and ``-medcodec_instrument=medcodec`` (coverage from medcodec only: a faster start).
"""

from __future__ import annotations

import os

# One thread per pool, before numpy / torch start theirs: stable timing, and RLIMIT_AS
# does not meet thread stacks the harness did not ask for.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import atexit  # noqa: E402
import dis  # noqa: E402
import hashlib  # noqa: E402
import importlib  # noqa: E402
import operator  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import atheris  # noqa: E402
from atheris.version_dependent import CMP_OP_SHIFT_AMOUNT  # noqa: E402

# atheris 3.0.0's comparison tracing (atheris._trace_cmp, which instrumented bytecode calls
# in place of every COMPARE_OP) keeps a reference to each comparison's result. For ints,
# strings and bytes that is True or False; for numpy arrays it is a new array every time:
# `array == 1` under instrumentation never frees its result (a records campaign grew by
# 20 MB per 1,000 inputs, to 3.2 GB in 5 minutes, an uninstrumented loop over the same
# inputs stays at 300 MB). Other comparisons are done here in Python (libFuzzer can only use
# the others anyway). atheris.Fuzz() puts its own function back, so the harness installs
# this one again from inside the fuzz target (see run).
_native_trace_cmp = atheris._trace_cmp
_COMPARISONS = {"<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
                ">=": operator.ge}
_COMPARE_BY_ARG = [_COMPARISONS[name] for name in dis.cmp_op]
_TRACED_TYPES = (int, str, bytes)


def _trace_cmp(left, right, arg, counter, is_const):
    if type(left) in _TRACED_TYPES and type(right) in _TRACED_TYPES:
        return _native_trace_cmp(left, right, arg, counter, is_const)
    return _COMPARE_BY_ARG[arg >> CMP_OP_SHIFT_AMOUNT](left, right)


def _with_trace_cmp(test_one_input):
    def target(data: bytes) -> None:
        global _native_trace_cmp
        if atheris._trace_cmp is not _trace_cmp:
            _native_trace_cmp, atheris._trace_cmp = atheris._trace_cmp, _trace_cmp
        before = _reset_peak()
        test_one_input(data)
        if before is not None:
            finding = peak_growth(before, _status_kib("VmHWM"), "peak memory")
            if finding is not None:
                report(finding, data)

    return target


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def _reset_peak() -> int | None:
    """The resident memory now (KiB), with the process's peak (VmHWM) reset to it, so
    that VmHWM after an input is that input's own peak (Linux: /proc/self/clear_refs, 5);
    None where that cannot be done. ``ru_maxrss`` would not do: it is the peak of the
    process's whole life, inherited from the parent across fork and exec (a harness
    started by a pytest worker of 730 MB began at 730 MB, and a 1.06 GiB input raised it
    by 520 MB)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kib("VmRSS")
    except (OSError, StopIteration, ValueError):
        return None


atheris._trace_cmp = _trace_cmp

MEMORY_BUDGET = 256 << 20  # DicomLimits(memory_bytes=...) given to every reader

# Coverage comes from these modules' bytecode, instrumented as they are first imported.
INSTRUMENTED = (
    "pydicom", "pydicom.encaps", "pydicom.filereader", "pydicom.filewriter", "pydicom.pixels",
    "pydicom.pixels.decoders", "pydicom.pixels.encoders",
    "medcodec", "medcodec.codec", "medcodec.container", "medcodec.crypto", "medcodec.deid", "medcodec.dicom",
    "medcodec.dicom.elements", "medcodec.dicom.encapsulation", "medcodec.dicom.geometry", "medcodec.dicom.limits",
    "medcodec.dicom.parsed", "medcodec.dicom.pixel_words", "medcodec.dicom.quiet", "medcodec.dicom.reading",
    "medcodec.dicom.syntaxes", "medcodec.dicom.writing",
    "medcodec.entropy", "medcodec.essential", "medcodec.paths", "medcodec.planes", "medcodec.sealing",
    "medcodec.stego", "medcodec.wavefront", "medcodec.wavelet", "medcodec.coders.difference", "medcodec.coders.selectors",
)
# Big tables, no branches: instrumenting them would only slow every start. The compiled
# kernels cannot be instrumented at all: numba compiles their bytecode, and atheris's
# tracing calls in it do not type (every input reaching the kernel failed with TypingError).
# Every kernel module (``*kernel.py``) is left out, including those a module imports lazily.
_MEDCODEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir, "medcodec")
NOT_INSTRUMENTED = [
    "pydicom._dicom_dict", "pydicom._private_dict", "pydicom._uid_dict", "medcodec.deid_table",
    *sorted("medcodec." + os.path.relpath(os.path.join(d, f), _MEDCODEC)[: -len(".py")].replace(os.sep, ".")
            for d, _, files in os.walk(_MEDCODEC) for f in files if f.endswith("kernel.py")),
]
# -medcodec_instrument=medcodec: leave pydicom out (3 s less to start, for short passes).
_PACKAGES = next((a.split("=", 1)[1].split(",") for a in sys.argv if a.startswith("-medcodec_instrument=")),
                 ["medcodec", "pydicom"])
with atheris.instrument_imports(include=_PACKAGES, exclude=NOT_INSTRUMENTED):
    for _module in INSTRUMENTED:
        importlib.import_module(_module)

import medcodec  # noqa: E402  (instrumented above)

from _contract import Finding, peak_growth, signature  # noqa: E402  (after medcodec is instrumented)
from _contract import check_error as _check_error  # noqa: E402

LIMITS = medcodec.DicomLimits(memory_bytes=MEMORY_BUDGET)

# --------------------------------------------------------------------------------------
# Checking

_ARTIFACTS = ""
_KEEP_GOING: dict | None = None  # -medcodec_keep_going=1: signature -> count
_STRICT = False  # -medcodec_strict=1


def check_error(exc: BaseException, data: bytes, what: str) -> None:
    """_contract.check_error, strict when the run was started with -medcodec_strict=1."""
    _check_error(exc, data, what, strict=_STRICT)


def call(what: str, func, data: bytes, *args, **kwargs):
    """``func(data, ...)``; its error checked against the contract; its result or None."""
    try:
        return func(data, *args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - every exception is judged by check_error
        try:
            check_error(exc, data, what)
        except Finding as finding:
            report(finding, data)
        return None


def report(finding: Finding, data: bytes) -> None:
    """Raise ``finding``, or with -medcodec_keep_going=1 record it and carry on."""
    if _KEEP_GOING is None:
        raise finding
    sig = signature(finding)
    _KEEP_GOING[sig] = _KEEP_GOING.get(sig, 0) + 1
    if _KEEP_GOING[sig] == 1:
        path = f"{_ARTIFACTS}finding-{hashlib.sha1(data).hexdigest()}"
        Path(path).write_bytes(data)
        print(f"\n=== FINDING {len(_KEEP_GOING)}: {sig}\n    input: {path}", file=sys.stderr)
        traceback.print_exception(finding, limit=-6, file=sys.stderr)
    # libFuzzer ends a -max_total_time run without Python's atexit: keep the tally on disk.
    lines = [f"{n:6d} x {sig}" for sig, n in sorted(_KEEP_GOING.items())]
    Path(f"{_ARTIFACTS}findings.txt").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------
# Running


def _option(argv: list[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(f"-{name}="):
            return arg.split("=", 1)[1]
    return None


def _cap_address_space(headroom_mb: int) -> None:
    """RLIMIT_AS = what the loaded harness maps now + headroom: an allocation the memory
    budget should have refused raises MemoryError, which check_error reports."""
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    limit = vm + (headroom_mb << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _remove_stale_dirs() -> None:
    """Scratch directories of earlier runs that ended without atexit (-max_total_time)."""
    for path in Path(tempfile.gettempdir()).glob("medcodec-fuzz-*-*-*-*"):
        pid = path.name.split("-")[2]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(path, True)


def run(name: str, test_one_input, seeds: dict[str, bytes], *, custom_mutator=None, argv=None) -> None:
    """Start libFuzzer on ``test_one_input`` with ``seeds`` (never returns)."""
    argv = list(sys.argv if argv is None else argv)
    global _KEEP_GOING, _ARTIFACTS, _STRICT
    _STRICT = _option(argv, "medcodec_strict") == "1"
    headroom = int(_option(argv, "medcodec_as_headroom_mb") or 3072)
    if _option(argv, "medcodec_keep_going") == "1":
        _KEEP_GOING = {}
    argv = [a for a in argv if not a.startswith("-medcodec_")]
    flags = [a for a in argv[1:] if a.startswith("-")]
    corpora = [a for a in argv[1:] if not a.startswith("-")]
    _remove_stale_dirs()
    replay = bool(corpora) and all(os.path.isfile(c) for c in corpora)  # libFuzzer runs those inputs once
    if not replay:
        seed_dir = tempfile.mkdtemp(prefix=f"medcodec-fuzz-{os.getpid()}-{name}-seeds-")
        atexit.register(shutil.rmtree, seed_dir, True)
        for i, (label, blob) in enumerate(sorted(seeds.items())):
            Path(seed_dir, f"{i:03d}-{re.sub(r'[^A-Za-z0-9._-]', '_', label)}").write_bytes(blob)
        if not corpora:  # new inputs go to the first corpus directory: a scratch one by default
            work = tempfile.mkdtemp(prefix=f"medcodec-fuzz-{os.getpid()}-{name}-corpus-")
            atexit.register(shutil.rmtree, work, True)
            corpora = [work]
        corpora.append(seed_dir)
    defaults = {
        "timeout": "15",
        "rss_limit_mb": "4096",
        "max_len": str(max(len(b) for b in seeds.values()) + 4096),
        "artifact_prefix": os.path.join(tempfile.gettempdir(), "medcodec-fuzz-findings",
                                        time.strftime(f"{name}-%Y%m%d-%H%M%S-")),
        "print_final_stats": "1",
    }
    for key, value in defaults.items():
        if _option(flags, key) is None:
            flags.append(f"-{key}={value}")
    _ARTIFACTS = _option(flags, "artifact_prefix")
    os.makedirs(os.path.dirname(os.path.abspath(_ARTIFACTS)), exist_ok=True)
    print(f"[{name}] {len(seeds)} seeds; artifacts: {_option(flags, 'artifact_prefix')}*", file=sys.stderr)
    _cap_address_space(headroom)
    atheris.Setup([argv[0], *flags, *corpora], _with_trace_cmp(test_one_input), custom_mutator=custom_mutator)
    atheris.Fuzz()
