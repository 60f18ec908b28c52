"""Re-run the hardening issue's probes and print what became of each input.

    python -m benchmarks.hardening_probes [--quick] [--n N] [--timeout S] [--headroom-gib G]
                                          [--only CATEGORY,...] [--seed S] [--verbose]

Categories (``--only`` takes their short names):

* ``dicom``: mutated real DICOM files (pydicom-data, the fuzz harnesses' seed files):
  byte flips, truncations, inserted bytes, and huge declared Rows / Columns /
  NumberOfFrames; each is compressed (preset fast) and, when that succeeds, restored and
  compared with the input;
* ``records``: corrupted records, made now from those files (plain and keyed with the
  golden test keyring) and the golden records of tests/fixtures/golden: raw byte flips
  and truncations (the checksums' job), and flips and cuts inside one section payload
  with the record re-checksummed (the decoders' job); each is restored (with the key for
  keyed records) and a success is compared with the unmutated record's restore;
* ``claims``: tiny files claiming huge images (a 600-byte JPEG-LS declaring 4000 x 4000,
  a 64 x 64 one declaring 16000 x 16000, with and without the pixel-ratio limit, a native
  file declaring 60000 x 60000 x 50000 frames);
* ``bombs``: a .dcm.gz of 300 MiB of zeros and a zip member of 200 MiB, read with the
  pipeline's source reader;
* ``phi``: files whose failing field (Rows, Columns, transfer syntax...) holds a planted
  string (tests/test_hostile_input.py's), compressed: the string must be in no message;
* ``migrate``: one small migrate run (FnApiRunner) over good files, planted-PHI files and
  the gzip bomb: every input must end indexed or dead-lettered with a one-line reason,
  and the planted string must be in no file the archive holds but the shards.

Each input runs in a worker process whose address space is capped (RLIMIT_AS) at what
the loaded worker maps plus ``--headroom-gib`` (3 GiB), with a memory budget of 1 GiB
(DicomLimits / --memory-budget), so a MemoryError is an allocation the budget did not
bound. A worker that does not answer within ``--timeout`` seconds is killed (a hang) and
a fresh one started; the codec's own time limit (DicomLimits.seconds) is half of it.

An outcome is *clean* when the input was handled: a correct result, or a typed one-line
error that quotes no input (tests/fuzz/_contract.py's check_error, the fuzz harnesses'
contract; a dead letter in ``migrate``). Otherwise it is a *traceback* (an untyped
exception, or a worker that died), a *hang*, an *over-budget* allocation (MemoryError in
the error's chain), a *bad message* (not one line, quotes input, holds the planted PHI)
or *silent wrong* (a restore that succeeded but differs from its input or from the
unmutated record's, a bomb read whole, an input that migrate neither indexed nor
dead-lettered). The script exits 1 when anything is not clean.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import multiprocessing as mp
import random
import struct
import sys
import tempfile
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "tests" / "fuzz"

OUTCOMES = ("clean", "traceback", "hang", "over_budget", "bad_message", "wrong_restore")
CATEGORIES = {
    "dicom": "mutated DICOM files",
    "records": "corrupted records",
    "claims": "tiny files claiming huge images",
    "bombs": "compressed-input bombs",
    "phi": "planted PHI in failing fields",
    "migrate": "migrate run (dead letters)",
}
MEMORY_BUDGET = 1 << 30
PLANT = "ZEBRAFISHQ"  # the string planted in failing fields (planted_inputs)


def _fuzz_path() -> None:
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------------------
# Inputs (made in the parent process)


@dataclass
class Probe:
    category: str
    name: str
    job: dict = field(repr=False)


_ROWS, _COLUMNS, _FRAMES = 0x00280010, 0x00280011, 0x00280008
_HUGE_VALUES = (0, 1, 255, 4096, 32767, 40000, 65535)


def _element_places(data: bytes, tag: int) -> list[tuple[int, int, bool]]:
    """(value offset, value length, little) of explicit-VR or implicit-VR elements ``tag``."""
    group, elem = tag >> 16, tag & 0xFFFF
    found = []
    for little in (True, False):
        pattern = struct.pack("<HH" if little else ">HH", group, elem)
        at = data.find(pattern)
        while at != -1:
            vr = data[at + 4 : at + 6]
            if vr in (b"US", b"IS"):
                (length,) = struct.unpack_from("<H" if little else ">H", data, at + 6)
                found.append((at + 8, length, little))
            elif len(data) >= at + 8:
                (length,) = struct.unpack_from("<I" if little else ">I", data, at + 4)
                if length in (2, 4, 6, 8):
                    found.append((at + 8, length, little))
            at = data.find(pattern, at + 1)
    return [f for f in found if f[0] + f[1] <= len(data)]


def _claim(data: bytes, rng: random.Random) -> bytes | None:
    """``data`` with Rows, Columns or NumberOfFrames set to a large (or degenerate) value,
    element lengths unchanged."""
    places = [(tag, p) for tag in (_ROWS, _COLUMNS, _FRAMES) for p in _element_places(data, tag)]
    if not places:
        return None
    tag, (at, length, little) = rng.choice(places)
    value = rng.choice(_HUGE_VALUES)
    if tag == _FRAMES or length != 2:  # IS: decimal text of the element's length
        text = str(rng.choice((0, 2, 999, 50000, 99999999)))[:length].ljust(length).encode()
        return data[:at] + text + data[at + length :]
    return data[:at] + struct.pack("<H" if little else ">H", value) + data[at + 2 :]


def mutate_dicom(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    r = rng.random()
    if r < 0.35:
        claimed = _claim(data, rng)
        if claimed is not None:
            return "claim", claimed
    if r < 0.6:
        out = bytearray(data)
        for _ in range(rng.choice((1, 1, 2, 4, 16))):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return "flip", bytes(out)
    if r < 0.8:
        return "truncate", data[: rng.randrange(len(data))]
    at = rng.randrange(len(data))
    return "insert", data[:at] + rng.randbytes(rng.choice((1, 2, 7, 64))) + data[at:]


def mutate_record(blob: bytes, rng: random.Random) -> tuple[str, bytes]:
    from medcodec import container as ct

    r = rng.random()
    if r < 0.25:
        out = bytearray(blob)
        for _ in range(rng.choice((1, 2, 4))):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return "flip", bytes(out)
    if r < 0.4:
        return "truncate", blob[: rng.randrange(len(blob))]
    record = ct.read_record(blob)
    sections = list(record.sections)
    i = rng.randrange(len(sections))
    payload = bytearray(sections[i].payload)
    if r < 0.8 and payload:
        for _ in range(rng.choice((1, 1, 2, 8))):
            payload[rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
        kind = f"section {sections[i].name} flip"
    else:
        payload = payload[: rng.randrange(len(payload) + 1)]
        kind = f"section {sections[i].name} cut"
    sections[i] = ct.Section(sections[i].type, bytes(payload), sections[i].flags)
    return kind, ct.write_record(ct.Record(config=record.config, sections=sections))


def jpegls_dicom(rows: int, cols: int, *, claim: tuple[int, int] | None = None) -> bytes:
    """A JPEG-LS lossless DICOM of an all-zero rows x cols image; ``claim=(rows, cols)`` makes
    the header declare other dimensions (also the tests' ``jpegls_dicom`` fixture)."""
    import imagecodecs
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"))
    ds.PixelData = encapsulate([imagecodecs.jpegls_encode(np.zeros((rows, cols), np.uint16))])
    ds.Rows, ds.Columns = claim or (rows, cols)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def planted_inputs() -> dict[str, bytes]:
    """Inputs that fail, each with the planted string in the field whose parsing fails
    (tests/test_hostile_input.py runs them through migrate too)."""
    import copy

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.dataelem import DataElement
    from pydicom.datadict import tag_for_keyword

    def saved(ds) -> bytes:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    base = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base.PatientName = PLANT  # also in a field that parses fine
    files = {}
    for keyword in ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored",
                    "HighBit", "PixelRepresentation"):
        ds = copy.deepcopy(base)
        tag = tag_for_keyword(keyword)
        ds[tag] = DataElement(tag, "LO", PLANT)
        files[f"{keyword}.dcm"] = saved(ds)
    ds = copy.deepcopy(base)
    ds.file_meta.TransferSyntaxUID = PLANT
    files["syntax.dcm"] = saved(ds)
    files["not_dicom.bin"] = PLANT.encode() * 50
    files["truncated.dcm"] = saved(base)[:-3000]
    return files


def build_probes(args, scratch: Path) -> tuple[list[Probe], list[str]]:
    _fuzz_path()
    import warnings

    import pydicom
    from _seeds import DICOM_SEED_FILES, dicom_file, golden_records, keyring, made_records

    warnings.simplefilter("ignore")  # pydicom's, on the files made here
    rng = random.Random(args.seed)
    probes: list[Probe] = []
    notes: list[str] = []
    wanted = set(args.only)
    if "dicom" in wanted:
        seeds = {}
        for name in DICOM_SEED_FILES:
            try:
                seeds[name] = dicom_file(name)
            except FileNotFoundError:
                notes.append(f"dicom: seed {name} not installed")
        names = sorted(seeds)
        for i in range(args.n):
            name = names[i % len(names)]
            kind, data = mutate_dicom(seeds[name], rng)
            probes.append(Probe("dicom", f"{name} {kind} #{i}", {"op": "compress", "data": data}))
    if "records" in wanted:
        ring = keyring()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records = {**golden_records(), **made_records(ring)}
        names = sorted(records)
        for i in range(args.n):
            name = names[i % len(names)]
            kind, blob = mutate_record(records[name], rng)
            probes.append(Probe("records", f"{name} {kind} #{i}",
                                {"op": "decode", "data": blob, "original": records[name]}))
    if "claims" in wanted:
        ct_small = dicom_file("CT_small.dcm")
        huge = pydicom.dcmread(io.BytesIO(ct_small))
        huge.Rows = huge.Columns = 60000
        huge.NumberOfFrames = 50000
        buf = io.BytesIO()
        huge.save_as(buf, enforce_file_format=True)
        # (data, max_pixel_ratio, memory budget): a huge budget leaves the ratio alone to refuse.
        cases = {
            "jpeg-ls 4000x4000 in <1 kB, ratio limit only": (jpegls_dicom(4000, 4000), 10_000, 1 << 50),
            "jpeg-ls 4000x4000 in <1 kB, budget only": (jpegls_dicom(4000, 4000), None, MEMORY_BUDGET),
            "jpeg-ls 64x64 claiming 16000x16000, ratio limit only":
                (jpegls_dicom(64, 64, claim=(16000, 16000)), 10_000, 1 << 50),
            "jpeg-ls 64x64 claiming 16000x16000, budget only":
                (jpegls_dicom(64, 64, claim=(16000, 16000)), None, MEMORY_BUDGET),
            "native 60000x60000x50000 frames": (buf.getvalue(), 10_000, MEMORY_BUDGET),
        }
        for name, (data, ratio, budget) in cases.items():
            probes.append(Probe("claims", name, {"op": "compress", "data": data, "max_pixel_ratio": ratio,
                                                 "memory_bytes": budget}))
    if "bombs" in wanted or "migrate" in wanted:
        bomb = scratch / "scan.dcm.gz"
        bomb.write_bytes(gzip.compress(bytes(300 << 20), compresslevel=1))
    if "bombs" in wanted:
        zbomb = scratch / "study.zip"
        with zipfile.ZipFile(zbomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("bomb.dcm", bytes(200 << 20))
        probes.append(Probe("bombs", ".dcm.gz of 300 MiB zeros", {"op": "read", "url": f"file://{bomb}"}))
        probes.append(Probe("bombs", "zip member of 200 MiB zeros",
                            {"op": "read", "url": f"file://{zbomb}", "member": "bomb.dcm"}))
    if "phi" in wanted:
        for name, data in planted_inputs().items():
            probes.append(Probe("phi", name, {"op": "compress", "data": data, "plant": PLANT}))
    if "migrate" in wanted:
        src = scratch / "src"
        src.mkdir()
        for name, data in planted_inputs().items():
            (src / name).write_bytes(data)
        for name in ("CT_small.dcm", "MR_small.dcm"):
            (src / f"good_{name}").write_bytes(dicom_file(name))
        (src / "scan.dcm.gz").write_bytes((scratch / "scan.dcm.gz").read_bytes())
        probes.append(Probe("migrate", "planted PHI, a gzip bomb and 2 good files",
                            {"op": "migrate", "src": str(src), "dst": str(scratch / "dst"), "plant": PLANT,
                             "good": 2}))
    return probes, notes


# --------------------------------------------------------------------------------------
# The worker (a separate process, address space capped)


def _worker(conn, headroom: int, timeout: float) -> None:
    import resource
    import warnings

    warnings.simplefilter("ignore")
    _fuzz_path()
    import medcodec
    from medcodec import container as ct

    try:  # the transformer's imports, before the cap (the golden llm records decode with it)
        import medcodec.model.coder  # noqa: F401
    except ImportError:
        pass
    from _contract import Finding, chain, check_error
    from _seeds import keyring

    from pipelines.sources import SourceError, SourceRef, read_source

    ring = keyring()
    limits = medcodec.DicomLimits(memory_bytes=MEMORY_BUDGET, seconds=timeout / 2)
    from pydicom.data import get_testdata_file

    warm = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    medcodec.decompress_dicom(medcodec.compress_dicom(warm, preset="fast"))  # compiled coders loaded
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))
    references: dict[str, str | None] = {}

    def judged(exc: BaseException, data: bytes, plant: str | None = None, typed=medcodec.MedcodecError):
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        where = traceback.extract_tb(exc.__traceback__)
        at = f" at {Path(where[-1].filename).name}:{where[-1].lineno}" if where else ""
        if any(isinstance(e, MemoryError) for e in chain(exc)):
            return "over_budget", f"{type(exc).__name__}{at}: {str(exc)[:200]}"
        if not isinstance(exc, typed):
            return "traceback", f"{type(exc).__name__}{at}: {str(exc)[:200]}"
        if plant and plant in str(exc):
            return "bad_message", f"planted PHI in the message: {type(exc).__name__}"
        if isinstance(exc, medcodec.MedcodecError):
            try:
                check_error(exc, data, "probe")
            except Finding as finding:
                return "bad_message", str(finding)[:300]
        elif "\n" in str(exc) or not str(exc).strip():
            return "bad_message", f"{type(exc).__name__} message is not one line"
        return "clean", f"{type(exc).__name__}: {str(exc)[:160]}"

    def restored_digest(blob: bytes) -> str:
        record = ct.read_record(blob)
        keyed = bool(record.config.get("sealed"))
        if record.config.get("kind") == "pixels":
            array = medcodec.decompress_pixels(blob, limits=limits)
            out = repr((array.dtype.str, array.shape)).encode() + array.tobytes()
        else:
            out = medcodec.decompress_dicom(blob, keyring=ring if keyed else None, limits=limits)
        return hashlib.sha256(out).hexdigest()

    def compress(job):
        data = job["data"]
        job_limits = limits if "max_pixel_ratio" not in job else medcodec.DicomLimits(
            memory_bytes=job["memory_bytes"], seconds=timeout / 2, max_pixel_ratio=job["max_pixel_ratio"])
        try:
            blob = medcodec.compress_dicom(data, preset="fast", limits=job_limits)
            restored = medcodec.decompress_dicom(blob, limits=job_limits)
        except BaseException as exc:  # noqa: BLE001 - judged
            return judged(exc, data, job.get("plant"))
        if restored == data:
            return "clean", "restored byte for byte"
        mode = ct.read_record(blob).config.get("restore_mode")
        if mode == "pixel-exact":
            import numpy as np

            from medcodec.dicom import parse_dicom

            try:
                same = np.array_equal(parse_dicom(restored).frames, parse_dicom(data).frames)
            except BaseException as exc:  # noqa: BLE001
                return "wrong_restore", f"pixel-exact restore does not parse: {type(exc).__name__}"
            return ("clean", "pixel-exact restore") if same else ("wrong_restore", "pixels differ")
        return "wrong_restore", f"{mode} restore differs from the input"

    def decode(job):
        original = job["original"]
        key = hashlib.sha256(original).hexdigest()
        if key not in references:
            try:
                references[key] = restored_digest(original)
            except BaseException as exc:  # noqa: BLE001 - an unmutated record that cannot be restored here
                references[key] = None
                return "skipped", f"unmutated record does not restore here: {type(exc).__name__}: {exc}"[:300]
        if references[key] is None:
            return "skipped", "unmutated record does not restore here"
        try:
            digest = restored_digest(job["data"])
        except BaseException as exc:  # noqa: BLE001 - judged
            return judged(exc, job["data"])
        if digest == references[key]:
            return "clean", "restores the same as the unmutated record"
        return "wrong_restore", "restores to something else than the unmutated record"

    def read(job):
        try:
            read_source(SourceRef(job["url"], job.get("member")))
        except BaseException as exc:  # noqa: BLE001 - judged
            return judged(exc, b"", typed=(medcodec.MedcodecError, SourceError))
        return "wrong_restore", "the bomb was read whole"

    def migrate(job):
        import json

        import pyarrow.parquet as pq

        from pipelines.archive import Archive
        from pipelines.runner import run_migrate

        results = []
        try:
            run_migrate(job["src"], job["dst"], preset="fast", local_model="classical-v1", progress=False,
                        phi_in_clear=True, memory_budget=MEMORY_BUDGET, max_seconds=timeout / 2)
        except BaseException as exc:  # noqa: BLE001 - judged: the job itself must not fail
            return [judged(exc, b"")]
        archive = Archive(job["dst"])
        dead = archive.read_deadletters()
        archived = archive.read_index().num_rows
        leaks = []
        for path in Path(job["dst"]).rglob("*"):
            if path.is_file() and "shards" not in path.parts:
                raw = path.read_bytes()
                text = json.dumps(pq.read_table(path).to_pylist(), default=str) if path.suffix == ".parquet" else ""
                if job["plant"].encode() in raw or job["plant"] in text:
                    leaks.append(path.name)
        if leaks:
            results.append(("bad_message", f"planted PHI in the archive's {sorted(set(leaks))}"))
        for row in dead:
            message = row.get("message") or ""
            if job["plant"] in message:
                results.append(("bad_message", f"planted PHI in a dead-letter reason: {row.get('error_type')}"))
            elif "\n" in message or not message.strip():
                results.append(("bad_message", f"dead letter reason is not one line: {row.get('error_type')}"))
            else:
                results.append(("clean", f"dead letter: {row.get('stage')} {row.get('error_type')}: {message[:120]}"))
        results += [("clean", "archived")] * archived
        n_inputs = len(list(Path(job["src"]).iterdir()))
        if len(dead) + archived != n_inputs or archived != job["good"]:
            results.append(("wrong_restore", f"{n_inputs} inputs: {archived} archived, {len(dead)} dead letters"))
        return results

    ops = {"compress": compress, "decode": decode, "read": read, "migrate": migrate}
    conn.send(("ready", vm))
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            result = ops[job["op"]](job)
        except BaseException as exc:  # noqa: BLE001 - a failure of the probe itself
            result = ("traceback", f"probe failed: {type(exc).__name__}: {exc}"[:300])
        conn.send(result)


class Worker:
    def __init__(self, headroom: int, timeout: float) -> None:
        self.headroom, self.timeout = headroom, timeout
        self.ctx = mp.get_context("spawn")
        self.proc = None
        self.starts = 0

    def start(self) -> None:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, self.headroom, self.timeout), daemon=True)
        self.proc.start()
        child.close()
        self.starts += 1
        if not self.conn.poll(300):
            raise RuntimeError("probe worker did not start in 300 s")
        self.conn.recv()

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(10)
            self.proc = None

    def run(self, job: dict, timeout: float):
        if self.proc is None:
            self.start()
        self.conn.send(job)
        if not self.conn.poll(timeout):
            self.stop()
            return "hang", f"no answer in {timeout:g} s"
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            code = self.proc.exitcode if self.proc is not None else None
            self.stop()
            return "traceback", f"worker died (exit code {code})"


# --------------------------------------------------------------------------------------
# Running and the table


def run_probes(probes: list[Probe], *, timeout: float, headroom: int, verbose: bool = False) -> dict:
    counts = {c: dict.fromkeys(("tried", *OUTCOMES, "skipped"), 0) for c in CATEGORIES}
    findings: list[str] = []
    worker = Worker(headroom, timeout)
    started = time.perf_counter()
    try:
        for probe in probes:
            limit = timeout * 6 if probe.job["op"] == "migrate" else timeout
            result = worker.run(probe.job, limit)
            for outcome, detail in result if isinstance(result, list) else [result]:
                if outcome == "skipped":
                    counts[probe.category]["skipped"] += 1
                    findings.append(f"[skipped] {probe.category}: {probe.name}: {detail}")
                    continue
                counts[probe.category]["tried"] += 1
                counts[probe.category][outcome] += 1
                if outcome != "clean":
                    findings.append(f"[{outcome}] {probe.category}: {probe.name}: {detail}")
                if verbose:
                    print(f"{outcome:13s} {probe.category:8s} {probe.name}: {detail}", file=sys.stderr)
    finally:
        worker.stop()
    return {"counts": counts, "findings": findings, "seconds": time.perf_counter() - started,
            "worker_starts": worker.starts}


def format_table(counts: dict) -> str:
    head = ("category", "tried", "clean", "tracebacks", "hangs", "over-budget", "bad messages", "silent wrong")
    rows = [head]
    for key, title in CATEGORIES.items():
        c = counts[key]
        if c["tried"] or c["skipped"]:
            rows.append((title, *(str(c[k]) for k in ("tried", *OUTCOMES))))
    total = {k: sum(c[k] for c in counts.values()) for k in ("tried", *OUTCOMES)}
    rows.append(("total", *(str(total[k]) for k in ("tried", *OUTCOMES))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[j]) if j == 0 else cell.rjust(widths[j]) for j, cell in enumerate(row)))
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 mutants per mutated category (default 300)")
    parser.add_argument("--n", type=int, default=None, help="mutants per mutated category (dicom, records)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per input before it counts as a hang")
    parser.add_argument("--headroom-gib", type=float, default=3.0,
                        help="address space the worker may map beyond what it holds once loaded (RLIMIT_AS)")
    parser.add_argument("--only", default=",".join(CATEGORIES),
                        help=f"comma-separated categories (default all: {','.join(CATEGORIES)})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="one line per input on stderr")
    args = parser.parse_args(argv)
    args.only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = set(args.only) - set(CATEGORIES)
    if unknown:
        parser.error(f"unknown categories {sorted(unknown)}; choose from {', '.join(CATEGORIES)}")
    if args.n is None:
        args.n = 60 if args.quick else 300
    with tempfile.TemporaryDirectory(prefix="medcodec-probes-") as scratch:
        probes, notes = build_probes(args, Path(scratch))
        result = run_probes(probes, timeout=args.timeout, headroom=int(args.headroom_gib * 2**30),
                            verbose=args.verbose)
    print(format_table(result["counts"]))
    print(f"\n{len(probes)} probes in {result['seconds']:.0f} s, worker started {result['worker_starts']} time(s);"
          f" seed {args.seed}, timeout {args.timeout:g} s, RLIMIT_AS = loaded worker + {args.headroom_gib:g} GiB,"
          f" memory budget {MEMORY_BUDGET >> 30} GiB")
    for line in notes + result["findings"]:
        print(line)
    bad = sum(c[k] for c in result["counts"].values() for k in OUTCOMES if k != "clean")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
