"""Reading inputs out of tar.gz archives and .gz files (pipelines.sources).

A tar.gz is one deflate stream, so a member is reached by inflating everything before
it. Reading members one at a time (as migrate's workers do, in any order) must not
inflate the archive once per member; the bytes must be the archive's, whatever the
order, the threads, the gzip members or a change of the file between reads.
"""

from __future__ import annotations

import gzip
import os
import random
import tarfile
import threading
import zlib

import numpy as np
import pytest

from conftest import tar_bytes
from pipelines import sources
from pipelines.sources import ReadLimits, SourceRef, expand_file, read_source


def _members(n: int, size: int, seed: int = 0) -> dict[str, bytes]:
    """``n`` members of ``size`` bytes that deflate about 1.5:1 (12-bit noise in 16-bit
    words, as uncompressed CT is), one with a name over 100 bytes (extra header blocks)."""
    rng = np.random.default_rng(seed)
    names = [f"study/series/{i:04d}.dcm" for i in range(n)]
    names[n // 2] = "study/" + "a-long-name-" * 12 + ".dcm"
    return {name: rng.integers(0, 4096, size // 2, dtype=np.uint16).tobytes() for name in names}


@pytest.fixture
def fresh(monkeypatch):
    """No archive kept from another test."""
    monkeypatch.setattr(sources, "_KEPT", type(sources._KEPT)())


def _kept_inflater(path) -> sources._Inflated:
    [inflated] = [v for k, v in sources._KEPT.items() if k[0] == "tgz" and k[1].endswith(str(path))]
    return inflated


def test_tgz_members_read_in_any_order_inflate_the_archive_about_once(tmp_path, fresh):
    members = _members(96, 48 << 10)
    tar = tar_bytes(members)
    path = tmp_path / "export.tar.gz"
    path.write_bytes(gzip.compress(tar, compresslevel=1))
    refs = list(expand_file(f"file://{path}"))
    assert [r.member for r in refs] == list(members) and all(r.offset is not None for r in refs)

    # listing order: each read goes on from where the last one stopped
    assert [read_source(r) for r in refs] == list(members.values())
    inflater = _kept_inflater(path)
    assert inflater.inflated <= len(tar) + (64 << 10)

    # any order: each read resumes at the last state before its member
    inflater.inflated = 0
    order = refs[:]
    random.Random(3).shuffle(order)
    for ref in order:
        assert read_source(ref) == members[ref.member]
    assert len(inflater.states) >= len(tar) // sources.INFLATE_SPACING
    # at most a spacing before each member, plus the member (inflating from the start
    # each time would be ~N/2 archives)
    assert inflater.inflated <= len(order) * (sources.INFLATE_SPACING + (48 << 10) + 1024)
    assert inflater.inflated < 0.6 * len(order) * len(tar) / 2


def test_tgz_states_are_thinned_past_their_limit(tmp_path, fresh, monkeypatch):
    monkeypatch.setattr(sources, "INFLATE_SPACING", 64 << 10)
    monkeypatch.setattr(sources, "INFLATE_STATES_KEPT", 6)
    members = _members(40, 40 << 10, seed=1)
    tar = tar_bytes(members)
    path = tmp_path / "export.tgz"
    path.write_bytes(gzip.compress(tar, compresslevel=1))
    refs = list(expand_file(f"file://{path}"))
    for ref in refs[::-1]:  # the last member first: every state is made by the first read
        assert read_source(ref) == members[ref.member]
    inflater = _kept_inflater(path)
    assert len(inflater.states) <= 6
    assert inflater.spacing >= 4 * (64 << 10)  # halved twice or more: ~1.6 MB of tar, 6 states
    assert [s[0] for s in inflater.states] == sorted({s[0] for s in inflater.states})
    assert all(b[0] - a[0] >= inflater.spacing // 2 for a, b in zip(inflater.states, inflater.states[1:]))


def test_tgz_of_several_gzip_members_and_trailing_bytes(tmp_path, fresh, monkeypatch):
    """gzip files may be concatenated (gzip reads them as one), and a state may fall
    between two of them or inside either; bytes after the last member that start no
    gzip member are ignored, as gzip ignores trailing zeros."""
    monkeypatch.setattr(sources, "INFLATE_SPACING", 32 << 10)
    members = _members(24, 20 << 10, seed=2)
    tar = tar_bytes(members)
    cuts = [0, 100_000, 100_001, 250_000, len(tar)]
    path = tmp_path / "parts.tar.gz"
    parts = [gzip.compress(tar[a:b]) for a, b in zip(cuts, cuts[1:])]
    path.write_bytes(b"".join(parts) + bytes(1000))
    refs = list(expand_file(f"file://{path}"))
    assert [r.member for r in refs] == list(members)
    order = refs[:]
    random.Random(5).shuffle(order)
    assert [read_source(r) for r in order] == [members[r.member] for r in order]
    last_part = sum(map(len, parts[:-1]))
    assert any(c > last_part and z is not None for _, c, z in _kept_inflater(path).states)  # resumed in it


def test_tgz_reads_from_threads_changes_and_damage(tmp_path, fresh):
    members = _members(30, 30 << 10, seed=4)
    path = tmp_path / "study.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes(members)))
    refs = list(expand_file(f"file://{path}"))

    # threads reading the same archive get their own members
    got, errors = {}, []

    def reader(part):
        try:
            for ref in part:
                got[ref.member] = read_source(ref)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(refs[i::3][::-1] if i % 2 else refs[i::3],)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == members

    # a ref listed before offsets were recorded is found by name
    assert read_source(SourceRef(refs[7].url, refs[7].member)) == members[refs[7].member]

    # the archive replaced under the same name: its new bytes, not the kept inflater's
    changed = {name: data[::-1] for name, data in members.items()}
    path.write_bytes(gzip.compress(tar_bytes(changed), compresslevel=9))
    os.utime(path, ns=(10**18, 10**18))
    assert read_source(refs[20]) == changed[refs[20].member]

    # cut short: members before the cut read; one past it fails, and the inflater is
    # dropped, so the next read starts anew and is right
    blob = gzip.compress(tar_bytes(members))
    path.write_bytes(blob[: len(blob) * 2 // 3])
    os.utime(path, ns=(2 * 10**18, 2 * 10**18))
    with pytest.raises((EOFError, tarfile.ReadError)):
        read_source(refs[-1])
    assert not [k for k in sources._KEPT if k[0] == "tgz" and k[2] == path.stat().st_size]
    assert read_source(refs[1]) == members[refs[1].member]


def test_tgz_member_over_the_size_limit_is_refused(tmp_path, fresh):
    members = _members(4, 200 << 10, seed=6)
    path = tmp_path / "big.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes(members)))
    refs = list(expand_file(f"file://{path}"))
    with pytest.raises(sources.InputTooLargeError):
        read_source(refs[2], limits=ReadLimits(max_bytes=100 << 10))
    inflater = _kept_inflater(path)  # kept: a refusal leaves it where it was
    assert read_source(refs[2]) == members[refs[2].member] and _kept_inflater(path) is inflater


def test_gunzip_reads_members_and_returns_what_is_not_gzip_as_it_is():
    data = bytes(range(256)) * 5000
    two = gzip.compress(data[:1000]) + gzip.compress(data[1000:])
    assert sources._gunzip(two, ReadLimits()) == data
    assert sources._gunzip(two + bytes(7), ReadLimits()) == data
    assert sources._gunzip(two[:-5], ReadLimits()) == two[:-5]  # truncated: not a gzip file
    assert sources._gunzip(b"\x1f\x8b not deflate", ReadLimits()) == b"\x1f\x8b not deflate"
    with pytest.raises(sources.InputTooLargeError):
        sources._gunzip(gzip.compress(data), ReadLimits(max_bytes=len(data) - 1))


def test_tgz_member_that_inflates_past_the_ratio_limit_is_stopped(tmp_path, fresh):
    """A tar.gz member of zeros: 200 MiB in ~200 KB of deflate, stopped once it passes
    200:1 after 64 MiB, as .gz files and zip members are, before it is all in memory;
    the member after it still reads."""
    ct = bytes(range(256)) * 64
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes({"a.dcm": ct, "zeros.dcm": bytes(200 << 20), "b.dcm": ct}), compresslevel=1))
    refs = list(expand_file(f"file://{path}"))
    assert read_source(refs[0]) == ct
    with pytest.raises(sources.InputTooLargeError, match="200:1"):
        read_source(refs[1])
    assert read_source(refs[2]) == ct
    assert read_source(refs[1], limits=ReadLimits(max_ratio=2000)) == bytes(200 << 20)
    # a member that begins in the kept head of the archive, read after the inflater went
    # past it: its compressed bytes are counted from where it begins
    first = np.random.default_rng(7).integers(0, 16, 3 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "head.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes({"first.dcm": first, "second.dcm": ct})))
    refs = list(expand_file(f"file://{path}"))
    assert read_source(refs[1]) == ct
    assert read_source(refs[0], limits=ReadLimits(ratio_from=1 << 20, max_ratio=3)) == first
    with pytest.raises(sources.InputTooLargeError, match="1:1"):
        read_source(refs[0], limits=ReadLimits(ratio_from=1 << 20, max_ratio=1))


def test_tgz_damaged_after_listing_reads_as_tarfile_does_or_fails_cleanly(tmp_path, fresh):
    """Differential: a two-member gzip of a tar, listed intact, then damaged (bits
    flipped, bytes cut, inserted or removed) under the same name. Where both this reader
    and tarfile's (by name, through gzip) give a member, they give the same bytes; this
    reader fails only with the errors a damaged archive raises (dead letters in migrate),
    never another exception."""
    rng = np.random.default_rng(0)
    members = {f"s/{i}.dcm": rng.integers(0, 4096, int(rng.integers(10, 30000)), dtype=np.uint16).tobytes()
               for i in range(12)}
    tar = tar_bytes(members)
    intact = gzip.compress(tar[:150_000]) + gzip.compress(tar[150_000:])
    path = tmp_path / "export.tar.gz"
    path.write_bytes(intact)
    refs = list(expand_file(f"file://{path}"))
    assert [r.member for r in refs] == list(members)
    damage = random.Random(11)
    outcomes = {"same": 0, "only this": 0, "only tarfile": 0, "both failed": 0}
    for attempt in range(60):
        data = bytearray(intact)
        for _ in range(damage.randint(1, 3)):
            at, op = damage.randrange(len(data)), damage.random()
            if op < 0.5:
                data[at] ^= 1 << damage.randrange(8)
            elif op < 0.65:
                del data[at:]
            elif op < 0.8:
                data[at:at] = damage.randbytes(damage.randint(1, 50))
            else:
                del data[at : at + damage.randint(1, 500)]
        path.write_bytes(bytes(data))
        os.utime(path, ns=(10**18 + attempt, 10**18 + attempt))
        for ref in refs[attempt % 3 :: 3]:
            try:
                ours = read_source(ref)
            except (EOFError, zlib.error, tarfile.TarError, KeyError, sources.SourceError):
                ours = None
            try:
                with tarfile.open(path, "r:gz") as tf:
                    theirs = tf.extractfile(tf.getmember(ref.member)).read()
            except (EOFError, zlib.error, tarfile.TarError, KeyError, OSError):
                theirs = None
            if ours is not None and theirs is not None:
                assert ours == theirs, (attempt, ref.member)
            outcomes["same" if ours is not None and theirs is not None else "only this" if ours is not None
                     else "only tarfile" if theirs is not None else "both failed"] += 1
    assert outcomes["same"] > 20 and outcomes["both failed"] > 20  # both kinds of outcome were met


def test_tar_gz_reads_benchmark(tmp_path, fresh, testdata_path, capsys):
    """benchmarks.tar_gz_reads on two small files, two copies: every member read and
    checked both ways, the figures consistent with what was written."""
    from pathlib import Path

    from benchmarks import tar_gz_reads

    files = [(Path(testdata_path(n)).parent, Path(testdata_path(n))) for n in ("CT_small.dcm", "MR_small.dcm")]
    r = tar_gz_reads.measure(files, tmp_path, copies=2, sample=3, order="random")
    raw = 2 * sum(p.stat().st_size for _, p in files)
    assert (r["members"], r["raw_bytes"], r["by_name_sampled"]) == (4, raw, 3)
    # random order, one state (the archive is under a spacing): each read inflates from the start at most
    assert raw <= r["inflated_bytes"] <= 4 * (raw + 8 * 512) and r["states"] == 1 and r["by_name_median_s"] > 0
    report = tar_gz_reads.format_report(r)
    assert "4 members (2 copies of 2 pydicom-data files)" in report and "random order" in report
    with pytest.raises(SystemExit):
        tar_gz_reads.main(["--copies", "0"])
    assert "--copies" in capsys.readouterr().err


def test_tgz_whose_checksum_fails_is_not_listed(tmp_path, fresh):
    """A byte changed in a stored deflate block inflates without complaint to another
    byte; tarfile stops reading at the tar's end marker, before gzip's CRC-32. Listing
    reads on to it, so the archive is a dead letter rather than members archived with
    bytes their source never had."""
    members = _members(6, 20 << 10, seed=8)
    blob = bytearray(gzip.compress(tar_bytes(members), compresslevel=0))
    path = tmp_path / "damaged.tar.gz"
    path.write_bytes(bytes(blob))
    assert [r.member for r in expand_file(f"file://{path}")] == list(members)
    blob[len(blob) // 2] ^= 0x40  # inside a member's data: stored, so it inflates as it is
    path.write_bytes(bytes(blob))
    [(ref, exc)] = list(expand_file(f"file://{path}"))
    assert ref.member is None and "CRC" in str(exc)
