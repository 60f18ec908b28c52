"""Listing and reading archive inputs with fsspec: plain files and zip / tar(.gz) members.

Beam's own file matching does not understand fsspec URLs, so listing and reading
happen here, inside DoFns. A source is a file URL, optionally with a member name
inside a zip or tar archive.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import tarfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator

import fsspec.spec

from .storage import open_fs

# What listing reads of each file: enough to tell an archive from a DICOM file.
HEAD_BYTES = 512
# Object stores' file objects read ahead by a block (s3fs: 50 MiB; gcsfs: 5 MiB): a
# 512-byte sniff fetched whole files, and every read of one zip member the whole zip.
# Listing reads the head alone, with no read-ahead, and so do zip and tar member reads
# (_zip_directory, _tar_member_at); the rest read ahead this block.
ARCHIVE_BLOCK = 1 << 20
_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"
# What tells one version of an object from another (S3, GCS, local files).
_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "LastModified", "updated", "mtime")


@dataclass(frozen=True, order=True)
class SourceRef:
    """One input instance: a file, or a member of a zip/tar archive.

    ``size``: its bytes as listing saw them (a file's stored size, a zip or tar member's
    uncompressed size; None where unknown). It only orders work (``migrate.balanced_order``).
    ``offset``: where a tar member's headers begin in the tar (a tar.gz's inflated
    bytes), as listing found them; reading looks there first, and takes the member found
    there when it has this name. ``kind``: a member's archive kind as listing found it
    ("zip", "tar", "tgz"; None: read its first bytes to know). ``version``: the file's
    (the archive's, for a member) size and ETag as listing saw them, on S3, where a read
    asks for that version (If-Match) without asking for the file's size and version
    first (``_read_as_listed``). None of them is part of its identity."""

    url: str
    member: str | None = None
    size: int | None = field(default=None, compare=False)
    offset: int | None = field(default=None, compare=False)
    kind: str | None = field(default=None, compare=False)
    version: tuple[int, str] | None = field(default=None, compare=False)

    @property
    def identity(self) -> str:
        """Stable string naming the source (hashed before it is stored anywhere)."""
        return self.url if self.member is None else f"{self.url}::{self.member}"

    @property
    def hint(self) -> str:
        """A non-identifying description: container kind and extension only."""
        name = self.member or self.url
        ext = name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""
        return ("member" if self.member else "file") + (f":.{ext}" if ext and len(ext) <= 5 else "")


class SourceError(Exception):
    """A source could not be listed or read."""


class InputTooLargeError(SourceError):
    """An input is larger, or decompresses to more, than the read limits allow."""


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on one input's bytes, checked while reading (before it is parsed).

    ``max_bytes``: an input (a file, or a .gz / zip / tar member after decompression) may
    not be larger. ``max_ratio``: a compressed input (.gz, zip and tar.gz members) may not
    decompress to more than this many bytes per compressed byte once past ``ratio_from``
    bytes (a few MB of gzip holding gigabytes of zeros stop at ``ratio_from``, not after
    they were inflated). DICOM compresses 2-20:1 in gzip; padding or blank frames more.
    """

    max_bytes: int = 2 << 30
    max_ratio: int = 200
    ratio_from: int = 64 << 20

    def check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise InputTooLargeError(f"input of {size} bytes is over the limit of {self.max_bytes} bytes (--max-input-size)")

    def check_ratio(self, out_bytes: int, in_bytes: int) -> None:
        self.check_size(out_bytes)
        if out_bytes > self.ratio_from and out_bytes > self.max_ratio * max(in_bytes, 1):
            raise InputTooLargeError(
                f"compressed input inflates past {out_bytes} bytes from {in_bytes}, over the limit of"
                f" {self.max_ratio}:1 (a decompression bomb, or raise the limit)"
            )


def _archive_kind(head: bytes) -> str | None:
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_GZIP_MAGIC):
        return "tgz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def list_sources(src: str, *, storage_options: dict | None = None) -> Iterator[SourceRef | tuple[SourceRef, Exception]]:
    """Every input under ``src``: files in any nested folder, and zip/tar(.gz) members.

    Yields SourceRef, or (SourceRef, error) for an archive that cannot be listed. The
    migrate job runs the same three steps on many workers (list_top, find_files,
    expand_file); this is them in a row, in order.
    """
    for url, is_dir in list_top(src, storage_options=storage_options):
        for file_url, info in (find_files(url, storage_options=storage_options) if is_dir else [(url, None)]):
            yield from expand_file(file_url, storage_options=storage_options, info=info)


def list_top(src: str, *, storage_options: dict | None = None) -> list[tuple[str, bool]]:
    """(URL, is a folder) of each entry directly under ``src`` (``src`` itself when it is a
    file): the first level of the listing, which workers then walk in parallel."""
    fs, root = open_fs(src, storage_options)
    if fs.isfile(root):
        return [(fs.unstrip_protocol(root), False)]
    out = []
    for entry in fs.ls(root, detail=True):
        path = entry["name"].rstrip("/")
        if path == root.rstrip("/"):
            continue  # some stores list a folder's own marker
        out.append((fs.unstrip_protocol(path), entry.get("type") == "directory"))
    return sorted(out)


def find_files(url: str, *, storage_options: dict | None = None) -> list[tuple[str, dict]]:
    """(URL, what the listing said of it: ``listed_info``) of every file under one
    folder, at any depth, sorted by URL."""
    fs, root = open_fs(url, storage_options)
    return [(fs.unstrip_protocol(p), listed_info(entry)) for p, entry in sorted(fs.find(root, detail=True).items())]


# What a listing's entry keeps for opening the file later: its size and version, so
# opening it asks the store for neither again.
_LISTED_KEYS = ("name", "size", "type", "VersionId", *_VERSION_KEYS)


def listed_info(entry: dict) -> dict:
    """The part of a listing's entry (``fs.find(detail=True)``) that opening its file uses."""
    return {k: entry[k] for k in _LISTED_KEYS if entry.get(k) is not None}


def _conditional(fs) -> bool:
    """Whether reads from ``fs`` can ask for one version of a file (S3's If-Match)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return any(p in ("s3", "s3a") for p in protocols)


def _open_listed(fs, path: str, info: dict | None, **kwargs) -> BinaryIO:
    """``fs.open(path, "rb", **kwargs)`` given what a listing or ``fs.info`` said of the
    file (``info``; None: asked on opening, as fsspec does): on s3fs and gcsfs opening a
    file asks for its size, and the first read for its ETag, unless given. On S3 every
    read asks for the version ``info`` names (If-Match: s3fs does so where it asked for
    the size itself): one that changed since fails with s3fs's FileExpired, never gives
    another version's bytes."""
    size = None if info is None else info.get("size")
    fh = fs.open(path, "rb", size=size, **kwargs)
    if size is not None and isinstance(fh, fsspec.spec.AbstractBufferedFile):
        fh.details = info
        if _conditional(fs) and info.get("ETag"):
            fh.read_kw = {**fh.read_kw, "IfMatch": info["ETag"]}
    return fh


def _listed_version(fs, info: dict | None) -> tuple[int, str] | None:
    """(size, ETag) of a file on S3 as ``info`` states them, else None."""
    if info is None or not _conditional(fs) or not isinstance(info.get("size"), int) or not info.get("ETag"):
        return None
    return info["size"], str(info["ETag"])


def _changed(exc: BaseException | None) -> bool:
    """Whether ``exc`` says a file is not the version a read asked for (s3fs's FileExpired),
    or was raised from such an error (zipfile's BadZipFile while reading its directory)."""
    if exc is None:
        return False
    return type(exc).__name__ == "FileExpired" or _changed(exc.__cause__) or _changed(exc.__context__)


def _read_as_listed(fs, path: str, ref: SourceRef, read: Callable[[dict | None], Any]) -> Any:
    """``read(info)`` with what listing said of the file (``ref.version``: no request for
    its size and version), where it still is that version; else, or without one,
    ``read`` with what the store says of it now (``info`` None: ask). Either way a read
    gives one version's bytes: those a reader holds of the listed version already (a
    tar.gz inflater's last block) read as that version. On S3 a request is a round trip
    (10-30 ms) a worker thread waits out: a plain file was read with two (its size and
    ETag, then its bytes), a zip or tar.gz member with one for the archive's version
    (its kept directory or inflater) before its bytes."""
    if ref.version is not None and _conditional(fs):
        size, etag = ref.version
        try:
            return read({"name": path, "size": size, "type": "file", "ETag": etag})
        except Exception as exc:
            if not _changed(exc):
                raise
            fs.invalidate_cache(path)  # its listing may be cached in this process: ask the store
    return read(None)


def expand_file(url: str, *, storage_options: dict | None = None,
                info: dict | None = None) -> Iterator[SourceRef | tuple[SourceRef, Exception]]:
    """One listed file -> its inputs: the file, or each member of a zip/tar(.gz) archive
    (read from its first ``HEAD_BYTES``); (SourceRef, error) when an archive cannot be
    listed. ``info``: what the listing said of it (``find_files``), so that reading its
    first bytes is one request."""
    fs, path = open_fs(url, storage_options)
    url = fs.unstrip_protocol(path)

    def expand(info: dict | None) -> tuple:
        with _open_listed(fs, path, info, block_size=HEAD_BYTES, cache_type="none") as fh:
            head = fh.read(HEAD_BYTES)
            size = getattr(fh, "size", None)  # known from opening it (or the listing): no request of its own
            info = info or getattr(fh, "details", None)
        kind = _archive_kind(head)
        # the archive read as the version its first bytes were (on S3, without asking again)
        members = None if kind is None else _archive_members(fs, path, kind, info)
        return size, _listed_version(fs, info), kind, members

    try:
        try:
            size, version, kind, members = expand(info)
        except Exception as exc:
            if info is None or not _changed(exc):
                raise
            fs.invalidate_cache(path)  # replaced since the folder was listed: as it is now
            size, version, kind, members = expand(None)
    except Exception as exc:  # an unreadable archive is a dead letter, never a crash
        yield SourceRef(url), exc
        return
    if members is None:
        yield SourceRef(url, size=size if isinstance(size, int) else None, version=version)
    else:
        for member, member_size, offset in members:
            yield SourceRef(url, member, size=member_size, offset=offset, kind=kind, version=version)


def _archive_members(fs, path: str, kind: str, info: dict | None) -> list[tuple[str, int, int | None]] | None:
    """(name, uncompressed size, where its headers begin in a tar, else None) of each
    member of a zip/tar archive (``info``: what is known of it, ``_open_listed``); None
    for a gzip file that holds no tar (one file)."""
    with _open_listed(fs, path, info, block_size=ARCHIVE_BLOCK) as fh:
        if kind == "zip":
            with zipfile.ZipFile(fh) as zf:
                return [(info.filename, info.file_size, None) for info in zf.infolist() if not info.is_dir()]
        try:
            with tarfile.open(fileobj=fh, mode="r:gz" if kind == "tgz" else "r:") as tf:
                names = [(info.name, info.size, info.offset) for info in tf.getmembers() if info.isfile()]
                if kind == "tgz":
                    # tarfile stops at the tar's end, before gzip's checksums: read on to
                    # them, so a tar.gz damaged where it still inflates is a dead letter
                    # (damaged bits in stored or Huffman-coded bytes inflate to other bytes)
                    while tf.fileobj.read(ARCHIVE_BLOCK):
                        pass
                # gzip'd zeros read as an empty tar: take such a file as one input, never as none
                return None if kind == "tgz" and not names else names
        except tarfile.TarError as exc:
            if kind == "tgz" and not _changed(exc):  # not a gzip'd tar; not one replaced while read
                return None
            raise


def read_source(ref: SourceRef, *, storage_options: dict | None = None, limits: ReadLimits = ReadLimits()) -> bytes:
    """The bytes of one input instance, bounded by ``limits`` (InputTooLargeError).

    On an object store each request costs a round trip (10-30 ms on S3), and a worker
    thread waits it out: a file is read as the version listing saw (``ref.version``,
    ``_read_as_listed``) without asking for its size first, a member of an archive
    listing saw (``ref.kind``) without reading the archive's first bytes again, and a
    zip or tar member's headers and data with one ranged request (``_read_window``,
    ``_tar_window_member``)."""
    fs, path = open_fs(ref.url, storage_options)
    if ref.member is None:
        return _read_as_listed(fs, path, ref, lambda info: _read_file(fs, path, info, limits))
    kind = ref.kind
    if kind is None:
        with fs.open(path, "rb", block_size=HEAD_BYTES, cache_type="none") as fh:
            kind = _archive_kind(fh.read(HEAD_BYTES))
    if kind == "zip":
        return _read_as_listed(fs, path, ref, lambda info: _read_zip_member(fs, path, info, ref, limits))
    if kind == "tgz":
        return _read_as_listed(fs, path, ref, lambda info: _read_tgz_member(fs, path, info, ref, limits))
    if kind == "tar" and ref.offset is not None and ref.size is not None and ref.size <= limits.max_bytes:
        # the member's headers (a long name's extra blocks too) and data, in one request;
        # where they are not there as listed, the tar is read as below
        start, end = ref.offset, ref.offset + _TAR_HEADERS + ref.size
        data = _read_as_listed(fs, path, ref, lambda info: _tar_window_member(_cat_range(fs, path, info, start, end),
                                                                              ref, limits))
        if data is not None:
            return data
    cache = "none" if kind == "tar" and ref.offset is not None else "readahead"
    with fs.open(path, "rb", block_size=ARCHIVE_BLOCK, cache_type=cache) as fh:
        return _read_tar_member(fh, ref, limits)


def _read_file(fs, path: str, info: dict | None, limits: ReadLimits) -> bytes:
    """A plain file's bytes (gunzipped where it is gzip), ``info`` what is known of it
    (None: ask)."""
    info = info or fs.info(path)
    size = info.get("size")
    if size is not None:
        limits.check_size(int(size))
    with _open_listed(fs, path, info, block_size=ARCHIVE_BLOCK) as fh:
        data = fh.read() if size is not None else _read_bounded(fh, limits, compressed=None)
    limits.check_size(len(data))
    return _gunzip(data, limits) if data.startswith(_GZIP_MAGIC) else data


def _read_zip_member(fs, path: str, info: dict | None, ref: SourceRef, limits: ReadLimits) -> bytes:
    """``ref``'s member of the zip at ``path`` (``info``: what is known of it; None: ask)."""
    info = info or fs.info(path)
    kept = _zip_directory(fs, path, info)
    zf, windowed = kept
    member_info = zf.getinfo(ref.member)
    limits.check_ratio(member_info.file_size, member_info.compress_size)
    # the local header (its name and extra field as long as the directory's, and a
    # little more), then the data
    span = (_ZIP_LOCAL_HEADER + len(member_info.orig_filename.encode("utf-8")) + len(member_info.extra) + 256
            + member_info.compress_size)
    # not where the zip's directory gives a compressed size no compression makes
    # (zlib's deflateBound: n + n/4096 + ... + 13): zipfile reads that member as it goes
    plausible = member_info.compress_size <= member_info.file_size + (member_info.file_size >> 10) + 4096
    try:
        with _read_window(fs, path, info, windowed, member_info.header_offset, span if plausible else None, limits):
            with zf.open(member_info) as member:
                return _read_bounded(member, limits, compressed=member_info.compress_size)
    except Exception as exc:
        if _changed(exc):
            _forget_kept(kept)  # a directory of another version than the zip's now
        raise


def _read_tgz_member(fs, path: str, info: dict | None, ref: SourceRef, limits: ReadLimits) -> bytes:
    """``ref``'s member of the tar.gz at ``path`` (``info``: what is known of it; None: ask)."""
    inflated = _inflated(fs, path, info or fs.info(path))
    try:
        with inflated.lock:  # one read at a time moves its inflater
            return _read_tar_member(_InflatedFile(inflated), ref, limits)
    except InputTooLargeError:
        raise  # refused between two reads of the inflater: it is where it stopped
    except Exception:
        _forget_kept(inflated)  # its inflater may be mid-way: the next read starts anew
        raise


def _cat_range(fs, path: str, info: dict | None, start: int, end: int) -> bytes:
    """Bytes ``start`` to ``end`` of the file at ``path``, in one request; on S3 of the
    version ``info`` names (``_open_listed``) where it names one."""
    if info is None or not _conditional(fs) or not info.get("ETag"):
        return fs.cat_file(path, start=start, end=end)
    with _open_listed(fs, path, info, block_size=HEAD_BYTES, cache_type="none") as fh:
        fh.seek(start)
        return fh.read(max(0, min(end, info["size"]) - start))


# What a tar member's headers may take before its data in the one request that reads
# both: its 512-byte header, and a long name's or pax record's blocks before it.
_TAR_HEADERS = 4096


def _tar_window_member(window: bytes, ref: SourceRef, limits: ReadLimits) -> bytes | None:
    """``ref``'s member's data when ``window`` (the tar from ``ref.offset`` on) begins with
    its headers and holds all of its data, else None. Sparse members (their data is not
    the file) are left to tarfile's reader."""
    try:
        with tarfile.open(fileobj=io.BytesIO(window), mode="r:") as tf:
            info = tf.firstmember
    except tarfile.TarError:
        return None
    if (info is None or info.name != ref.member or not info.isfile() or info.issparse()
            or info.offset_data + info.size > len(window)):
        return None
    limits.check_size(info.size)
    return window[info.offset_data : info.offset_data + info.size]


def _read_tar_member(fileobj, ref: SourceRef, limits: ReadLimits) -> bytes:
    """``ref``'s member of the (uncompressed) tar ``fileobj``: at ``ref.offset`` where
    that is its headers, else found by name. In a tar.gz (``_InflatedFile``) the member's
    compressed bytes so far bound it by the ratio limit too."""
    with tarfile.open(fileobj=fileobj, mode="r:") as tf:
        info = _tar_member_at(tf, ref) if ref.offset is not None else None
        if info is None:  # every header read up to the member's (listed without offsets, or changed since)
            info = tf.getmember(ref.member)
        limits.check_size(info.size)
        member = tf.extractfile(info)
        if member is None:
            raise SourceError("archive member is not a regular file")
        compressed = None
        if isinstance(fileobj, _InflatedFile):
            inflated = fileobj.inflated
            inflated.read_at(info.offset_data, 0)  # the inflater at the member's first byte
            start = inflated.in_at
            compressed = lambda: inflated.in_at - start  # noqa: E731
        return _read_bounded(member, limits, compressed=compressed)


# The zip directories and tar.gz inflaters this process used last, by (URL, size,
# version): an archive's members are read one at a time, and reading a zip's directory
# for each read it N times for N members (a zip of 10,000 instances holds about a
# megabyte of directory); inflating a tar.gz up to each member inflated it ~N/2 times.
_KEPT: OrderedDict[tuple, Any] = OrderedDict()
_KEPT_ARCHIVES = 8
_KEPT_LOCK = threading.Lock()


def _kept_archive(fs, path: str, kind: str, make: Callable[[BinaryIO], Any], info: dict) -> Any:
    """``make(file)`` for the archive at ``path`` (``info``: what the listing or the store
    says of it), over a file object that reads what is asked (no read-ahead; ``make`` may
    read ahead itself; on S3 the version ``info`` names), kept for the next member read
    while the object keeps its size and version (ETag, generation or mtime) and is one of
    the last ``_KEPT_ARCHIVES`` archives read."""
    version = next((str(info[k]) for k in _VERSION_KEYS if info.get(k) is not None), None)
    key = (kind, fs.unstrip_protocol(path), info.get("size"), version)
    with _KEPT_LOCK:
        if version is not None and key in _KEPT:
            _KEPT.move_to_end(key)
            return _KEPT[key]
    fh = _open_listed(fs, path, info, block_size=HEAD_BYTES, cache_type="none")
    try:
        made = make(fh)
    except BaseException:
        fh.close()
        raise
    if version is not None:
        with _KEPT_LOCK:
            _KEPT[key] = made
            while len(_KEPT) > _KEPT_ARCHIVES:
                _KEPT.popitem(last=False)  # its file closes when no read holds it
    return made


def _zip_directory(fs, path: str, info: dict) -> tuple[zipfile.ZipFile, "_WindowedFile"]:
    """The zip at ``path`` with its directory read (``_kept_archive``), over a
    ``_WindowedFile``: a member is read from the window its thread set (``_read_window``),
    or else its header, then its data, in reads of 1 MiB. ZipFile reads its members from
    several threads at once under its own lock."""

    def make(fh: BinaryIO) -> tuple[zipfile.ZipFile, _WindowedFile]:
        windowed = _WindowedFile(fh)
        return zipfile.ZipFile(windowed), windowed

    return _kept_archive(fs, path, "zip", make, info)


_ZIP_LOCAL_HEADER = 30  # a zip member's local header before its name and extra field


class _PositionedFile(io.RawIOBase):
    """A readable file that keeps its own position (``at``); subclasses read."""

    at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self.at
        elif whence == io.SEEK_END:
            offset += self._end()
        elif whence != io.SEEK_SET:
            raise ValueError(f"invalid whence {whence}")
        if offset < 0:
            raise ValueError("negative seek position")
        self.at = offset
        return offset

    def _end(self) -> int:
        raise io.UnsupportedOperation("seek from the end")


class _WindowedFile(_PositionedFile):
    """A file whose reads that fall inside the calling thread's window (``window``:
    (offset, bytes)) are served from it, the others from ``fh``."""

    def __init__(self, fh: BinaryIO) -> None:
        super().__init__()
        self.fh, self.local = fh, threading.local()

    def _end(self) -> int:
        return self.fh.seek(0, io.SEEK_END)

    def read(self, size: int = -1) -> bytes:
        start, data = getattr(self.local, "window", None) or (0, b"")
        if size is not None and size >= 0 and start <= self.at and self.at + size <= start + len(data):
            out = data[self.at - start : self.at - start + size]
        else:
            self.fh.seek(self.at)
            out = self.fh.read(size)
        self.at += len(out)
        return out

    def close(self) -> None:
        self.fh.close()
        super().close()


@contextlib.contextmanager
def _read_window(fs, path: str, info: dict, windowed: _WindowedFile, start: int, size: int | None,
                 limits: ReadLimits):
    """Reads of this thread from ``windowed`` within ``size`` bytes from ``start`` served
    from one ranged request for them (none where ``size`` is None or over
    ``limits.max_bytes``), of the version ``info`` names (``_cat_range``)."""
    if size is None or size > limits.max_bytes + (1 << 20):
        yield
        return
    windowed.local.window = (start, _cat_range(fs, path, info, start, start + size))
    try:
        yield
    finally:
        windowed.local.window = None


def _inflated(fs, path: str, info: dict) -> "_Inflated":
    """The tar.gz at ``path``'s inflated bytes (``_Inflated``, kept by ``_kept_archive``)."""
    return _kept_archive(fs, path, "tgz", _Inflated, info)


def _forget_kept(made: Any) -> None:
    """Keep no longer what ``_kept_archive`` made as ``made``."""
    with _KEPT_LOCK:
        for key in [k for k, v in _KEPT.items() if v is made]:
            del _KEPT[key]


# A tar.gz is one deflate stream: a member is read by inflating everything before it, and
# tarfile's gzip reader (found by name, every header read) inflated the whole archive
# for every member. On a 100 MB tar.gz of 200 members that was 0.75 s a member read,
# a 10 GB PACS export ~75 s each: the job's time grew as N squared. ``_Inflated`` keeps
# the inflater's state (zlib's ``copy``: ~40 KB, measured with tracemalloc) every
# ``spacing`` bytes of output, so a read resumes at the last state before its member, or
# goes on from where the last read stopped. At most INFLATE_STATES_KEPT states an
# archive (~10 MB): past that, every other one is dropped and the spacing doubles (a
# 10 GB archive: one each 40 MiB, at most ~0.15 s of inflating before a member).
INFLATE_SPACING = 1 << 20
INFLATE_STATES_KEPT = 256
_INFLATE_IN = 1 << 16  # compressed bytes given to zlib at a time
_INFLATE_OUT = 1 << 18  # inflated bytes asked of zlib at a time
_INFLATED_HEAD = 1 << 16  # the first inflated bytes, kept: tarfile reads the first header on opening


class _Inflated:
    """A gzip file's inflated bytes (gzip members one after another, as gzip reads
    them), read at any offset (``read_at``) under ``lock``; ``states=False`` keeps no
    states (read from the start on, once). ``inflated`` counts the bytes zlib gave,
    re-inflations included; ``in_at`` the compressed bytes it took."""

    def __init__(self, fh: BinaryIO, *, states: bool = True) -> None:
        self.fh, self.lock = fh, threading.Lock()
        self.spacing = INFLATE_SPACING if states else float("inf")
        # (inflated offset, compressed offset, zlib state there or None between gzip members)
        self.states: list[tuple[int, int, Any]] = [(0, 0, None)]
        self.head = b""
        self.inflated = 0
        self._resume(self.states[0])

    def _resume(self, state: tuple[int, int, Any]) -> None:
        self.out_at, self.in_at, z = state
        self.z = None if z is None else z.copy()
        self.pending = b""  # compressed bytes from in_at on that zlib has not taken
        self.block, self.block_at = b"", 0  # the compressed bytes read after them
        self.fh.seek(self.in_at)

    def _more(self) -> bytes:
        """The next compressed bytes, _INFLATE_IN at a time, read ARCHIVE_BLOCK at a time."""
        if self.block_at >= len(self.block):
            self.block, self.block_at = self.fh.read(ARCHIVE_BLOCK), 0
        more = self.block[self.block_at : self.block_at + _INFLATE_IN]
        self.block_at += len(more)
        return more

    def _inflate(self, most: int) -> bytes:
        """Up to ``most`` more inflated bytes; b"" at the end of the gzip data (trailing
        bytes that start no gzip member are ignored, as by ``_gunzip``). EOFError where
        the compressed data ends inside a member."""
        while True:
            if not self.pending:
                self.pending = self._more()
                if not self.pending:
                    if self.z is not None:
                        raise EOFError("compressed file ended before the end-of-stream marker was reached")
                    return b""
            if self.z is None:
                if len(self.pending) < 2:
                    self.pending += self._more()
                if not self.pending.startswith(_GZIP_MAGIC):
                    return b""
                self.z = zlib.decompressobj(wbits=31)
            given = len(self.pending)
            out = self.z.decompress(self.pending, most)
            if self.z.eof:
                self.pending, self.z = self.z.unused_data, None
            else:
                self.pending = self.z.unconsumed_tail
            self.in_at += given - len(self.pending)
            if out:
                self._took(out)
                return out

    def _took(self, out: bytes) -> None:
        if len(self.head) == self.out_at < _INFLATED_HEAD:
            self.head = (self.head + out)[:_INFLATED_HEAD]
        self.out_at += len(out)
        self.inflated += len(out)
        if self.out_at >= self.states[-1][0] + self.spacing:
            self.states.append((self.out_at, self.in_at, None if self.z is None else self.z.copy()))
            if len(self.states) > INFLATE_STATES_KEPT:
                self.states = self.states[::2]
                self.spacing *= 2

    def read_at(self, offset: int, size: int) -> bytes:
        """``size`` inflated bytes from ``offset`` (fewer at the end of the data); with
        ``size`` 0, the inflater moved to ``offset``."""
        if size and offset + size <= len(self.head):
            return self.head[offset : offset + size]
        state = self.states[bisect.bisect_right(self.states, offset, key=lambda s: s[0]) - 1]
        if not state[0] <= self.out_at <= offset:
            self._resume(state)
        while self.out_at < offset:
            if not self._inflate(min(_INFLATE_OUT, offset - self.out_at)):
                return b""
        parts, got = [], 0
        while got < size:
            part = self._inflate(min(_INFLATE_OUT, size - got))
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)


class _InflatedFile(_PositionedFile):
    """A file over ``_Inflated`` bytes with its own position, as tarfile reads one."""

    def __init__(self, inflated: _Inflated) -> None:
        super().__init__()
        self.inflated = inflated

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = []
            while part := self.read(1 << 20):
                parts.append(part)
            return b"".join(parts)
        data = self.inflated.read_at(self.at, size)
        self.at += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _tar_member_at(tf: tarfile.TarFile, ref: SourceRef) -> tarfile.TarInfo | None:
    """The regular file whose headers begin at ``ref.offset`` in ``tf`` when they name
    ``ref.member``, else None. Finding it by name (``getmember``) reads every header of
    the tar, on an object store a read-ahead block each: about the whole tar for every
    member read."""
    try:
        tf.fileobj.seek(ref.offset)
        info = tarfile.TarInfo.fromtarfile(tf)
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return None
    return info if info.name == ref.member and info.isfile() else None


def _read_bounded(stream: BinaryIO, limits: ReadLimits, *, compressed: int | Callable[[], int] | None) -> bytes:
    """Read a (decompressing) stream in chunks, stopping as soon as it passes the limits;
    ``compressed`` is its compressed size, when known, for the ratio limit (or what
    gives its compressed bytes read so far)."""
    chunks, total = [], 0
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if compressed is None:
            limits.check_size(total)
        else:
            limits.check_ratio(total, compressed() if callable(compressed) else compressed)
        chunks.append(chunk)


def _gunzip(data: bytes, limits: ReadLimits) -> bytes:
    """Inflate a gzip file (several members allowed) within the limits; bytes that are
    not valid gzip are returned as they are (a DICOM file that starts like gzip). Through
    ``_Inflated`` (no states kept): zlib's remaining input given back whole after each
    MiB of output, as this did, took 2.5 s on a 100 MB file that inflates in 0.5 s."""
    inflated, out, total = _Inflated(io.BytesIO(data), states=False), [], 0
    try:
        while chunk := inflated.read_at(total, 1 << 20):
            total += len(chunk)
            limits.check_ratio(total, inflated.in_at)
            out.append(chunk)
    except (zlib.error, EOFError):
        return data
    return b"".join(out)
