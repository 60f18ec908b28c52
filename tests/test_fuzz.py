"""The fuzz harnesses of tests/fuzz/ as a short, bounded pass, and the contract they check.

Each harness (DICOM parse / compress, record decode with the in-checksum mutator, reveal
of a stego DICOM) runs in its own process for a fixed number of inputs and a fixed libFuzzer
seed, starting from its seeds; any finding (an untyped exception, memory that ran out, a
message that is not one line or quotes input, an input over 120 s here: the campaigns' 15 s
is theirs to enforce) fails it.
Longer campaigns: run the harnesses themselves (see tests/fuzz/_common.py).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import medcodec
from medcodec import container as ct

FUZZ = Path(__file__).parent / "fuzz"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(FUZZ))
from _contract import Finding, check_error, quoted_input  # noqa: E402

# Inputs per harness: its seeds (30 DICOM files, 39 records, 8 stego files), then mutants.
RUNS = {"fuzz_dicom.py": 160, "fuzz_records.py": 400, "fuzz_reveal.py": 200}


@pytest.mark.parametrize("harness", sorted(RUNS))
def test_short_fuzz_pass_finds_nothing(harness, tmp_path):
    pytest.importorskip("atheris", reason="atheris (test extra, requirements.lock) runs the harnesses")
    runs = RUNS[harness]
    (tmp_path / "corpus").mkdir()
    proc = subprocess.run(
        # -timeout=120: slowness is the long campaigns' finding; on a loaded 2-core CI machine a
        # legitimate decode can take longer than their 15 s, and this pass is about typed errors.
        [sys.executable, str(FUZZ / harness), f"-atheris_runs={runs}", "-seed=1", "-timeout=120",
         "-medcodec_instrument=medcodec",
         f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    tail = "\n".join(line for line in proc.stderr.splitlines() if not line.startswith(("#", "INFO:")))[-6000:]
    assert proc.returncode == 0, tail
    assert re.search(rf"^Done {runs} in \d+ second", proc.stderr, re.M), tail
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("timeout-*")), tail
    assert list((tmp_path / "corpus").iterdir()), "the pass found no new coverage at all: is it fuzzing?"


# --------------------------------------------------------------------------------------
# The contract the harnesses check: it must catch what it is there to catch.

DATA = b"\x89MDC header SMITH^JOHN 1.2.840.10008.1.2.1 lots of other bytes"


def _raised(exc: BaseException, *, cause: BaseException | None = None) -> BaseException:
    try:
        try:
            raise cause or ValueError("inner")
        except BaseException:
            raise exc from (cause if cause is not None else None)
    except BaseException as caught:  # noqa: BLE001 - the test builds exceptions to judge
        return caught


def test_contract_accepts_a_typed_one_line_error():
    check_error(medcodec.CorruptRecordError("section 3 (global) fails its CRC32C"), DATA, "t")
    # numbers and UIDs may coincide with input; medcodec's own words may too
    check_error(medcodec.UnsupportedError("unknown transfer syntax UID '1.2.840.10008.1.2.1'"), DATA, "t")


@pytest.mark.parametrize("exc", [
    ValueError("boom"),  # untyped
    medcodec.InvalidDicomError("patient SMITH^JOHN is not allowed"),  # quotes a header value
    medcodec.CorruptRecordError("bad bytes b'\\x00\\x01'"),  # a bytes repr
    medcodec.CorruptRecordError("first line\nsecond line"),  # not one line
    medcodec.CorruptRecordError("x" * 600),  # not short
])
def test_contract_refuses(exc):
    with pytest.raises(Finding):
        check_error(exc, DATA, "t")


def test_contract_refuses_an_error_caused_by_memory_running_out():
    exc = _raised(medcodec.LimitExceededError("out of memory decoding this record"), cause=MemoryError())
    with pytest.raises(Finding, match="out of memory"):
        check_error(exc, DATA, "t")


def test_an_input_that_raises_peak_memory_past_the_limit_is_a_finding():
    from _contract import PEAK_GROWTH_LIMIT, peak_growth

    kb = PEAK_GROWTH_LIMIT >> 10
    assert peak_growth(400_000, 400_000 + kb, "dicom") is None
    finding = peak_growth(400_000, 400_000 + kb + 1024, "dicom")
    assert isinstance(finding, Finding) and "raised peak memory by 1025 MB (limit 1024 MB)" in str(finding)


def test_the_harness_reports_an_input_that_raises_peak_memory(tmp_path):
    pytest.importorskip("atheris", reason="atheris (test extra, requirements.lock) runs the harnesses")
    harness = tmp_path / "fuzz_big.py"
    harness.write_text(
        "import sys\n"
        "from _common import run\n"
        "import numpy as np\n"
        "def one(data):\n"
        "    if data.startswith(b'big'):\n"
        "        np.ones((1 << 30) // 8 + (64 << 17))  # 1 GiB + 64 MiB, touched\n"
        "run('big', one, {'a': b'small', 'b': b'big input'}, argv=sys.argv)\n")
    (tmp_path / "corpus").mkdir()
    proc = subprocess.run(
        [sys.executable, str(harness), "-atheris_runs=3", "-seed=1", "-medcodec_instrument=medcodec",
         f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus")],
        capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(FUZZ)},
    )
    out = proc.stdout + proc.stderr  # atheris prints the uncaught exception on stdout
    assert proc.returncode != 0 and "one input raised peak memory by" in out, out[-3000:]
    (crash,) = tmp_path.glob("crash-*")
    assert crash.read_bytes() == b"big input"


def test_contract_allows_config_identifiers_only():
    blob = medcodec.compress_pixels(__import__("numpy").zeros((4, 4), "uint8"), bits_stored=8, signed=False)
    record = ct.read_record(blob)
    record.config["pixels"]["global_model"] = "per-plane-v77"
    crafted = ct.write_record(record)
    check_error(medcodec.ModelMismatchError("record needs global model 'per-plane-v77'"), crafted, "t")
    record.config["pixels"]["global_model"] = "SMITH^JOHN went here"
    crafted = ct.write_record(record)
    assert quoted_input("record needs global model 'SMITH^JOHN went here'", crafted)
    with pytest.raises(Finding):
        check_error(medcodec.ModelMismatchError("record needs global model 'SMITH^JOHN went here'"), crafted, "t")


def test_contract_knows_the_coder_ids_of_every_medcodec_module():
    # A mutated id that shares a run with a registered one ("peane-fast-v2" and
    # "per-plane-fast-v2", defined in medcodec/coders/): the reader's list of the ids it
    # knows is medcodec's own text, not input (a campaign reported it when the contract
    # read only medcodec/*.py).
    from medcodec.coders import registered

    blob = medcodec.compress_pixels(__import__("numpy").zeros((4, 4), "uint8"), bits_stored=8, signed=False)
    record = ct.read_record(blob)
    record.config["pixels"]["global_model"] = "peane-fast-v2"
    crafted = ct.write_record(record)
    known = ", ".join(f"'{k}'" for k in registered(record_level=True))
    check_error(medcodec.ModelMismatchError(f"this reader knows {known}"), crafted, "t")


def test_strict_contract_reports_what_only_a_catch_all_typed():
    exc = _raised(medcodec.CorruptRecordError("record cannot be decoded: KeyError in decompress_dicom (damaged"
                                              " or crafted record)"), cause=KeyError("x"))
    check_error(exc, DATA, "t")
    with pytest.raises(Finding, match="only a catch-all typed this KeyError"):
        check_error(exc, DATA, "t", strict=True)


def test_seeds_cover_the_syntaxes_and_readers():
    """DICOM seeds: native LE / BE / implicit, JPEG-LS, JPEG 2000, RLE, deflated, headerless;
    record seeds: pixels and DICOM, plain and keyed, every restore mode."""
    import pydicom
    from _seeds import DICOM_SEED_FILES, KEYED_SOURCES, RECORD_SOURCES, dicom_file, golden_records

    syntaxes = set()
    for name in DICOM_SEED_FILES:
        ds = pydicom.dcmread(__import__("io").BytesIO(dicom_file(name)), force=True, stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        syntaxes.add(str(meta.get("TransferSyntaxUID", "none")) if meta is not None else "none")
    assert {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "none"} <= syntaxes
    assert set(RECORD_SOURCES) | set(KEYED_SOURCES) <= set(DICOM_SEED_FILES)
    kinds = {ct.read_record(blob).config["kind"] for blob in golden_records().values()}
    assert kinds == {"pixels", "dicom"}
