"""Listing and reading archive inputs with fsspec: plain files and zip / tar(.gz) members.

Beam's own file matching does not understand fsspec URLs, so listing and reading
happen here, inside DoFns. A source is a file URL, optionally with a member name
inside a zip or tar archive.
"""

from __future__ import annotations

import tarfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

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


@dataclass(frozen=True, order=True)
class SourceRef:
    """One input instance: a file, or a member of a zip/tar archive.

    ``size``: its bytes as listing saw them (a file's stored size, a zip or tar member's
    uncompressed size; None where unknown). It only orders work (``migrate.balanced_order``).
    ``offset``: where an (uncompressed) tar member's headers begin, as listing found them;
    reading looks there first, and takes the member found there when it has this name.
    Neither is part of its identity."""

    url: str
    member: str | None = None
    size: int | None = field(default=None, compare=False)
    offset: int | None = field(default=None, compare=False)

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
        for file_url in (find_files(url, storage_options=storage_options) if is_dir else [url]):
            yield from expand_file(file_url, storage_options=storage_options)


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


def find_files(url: str, *, storage_options: dict | None = None) -> list[str]:
    """Every file under one folder, at any depth (sorted URLs)."""
    fs, root = open_fs(url, storage_options)
    return [fs.unstrip_protocol(p) for p in sorted(fs.find(root))]


def expand_file(url: str, *, storage_options: dict | None = None) -> Iterator[SourceRef | tuple[SourceRef, Exception]]:
    """One listed file -> its inputs: the file, or each member of a zip/tar(.gz) archive
    (read from its first ``HEAD_BYTES``); (SourceRef, error) when an archive cannot be
    listed."""
    fs, path = open_fs(url, storage_options)
    url = fs.unstrip_protocol(path)
    try:
        with fs.open(path, "rb", block_size=HEAD_BYTES, cache_type="none") as fh:
            head = fh.read(HEAD_BYTES)
            size = getattr(fh, "size", None)  # known from opening it: no request of its own
        kind = _archive_kind(head)
        members = None if kind is None else _archive_members(fs, path, kind)
    except Exception as exc:  # an unreadable archive is a dead letter, never a crash
        yield SourceRef(url), exc
        return
    if members is None:
        yield SourceRef(url, size=size if isinstance(size, int) else None)
    else:
        for member, member_size, offset in members:
            yield SourceRef(url, member, size=member_size, offset=offset)


def _archive_members(fs, path: str, kind: str) -> list[tuple[str, int, int | None]] | None:
    """(name, uncompressed size, where its headers begin in a tar, else None) of each
    member of a zip/tar archive; None for a gzip file that holds no tar (one file)."""
    with fs.open(path, "rb", block_size=ARCHIVE_BLOCK) as fh:
        if kind == "zip":
            with zipfile.ZipFile(fh) as zf:
                return [(info.filename, info.file_size, None) for info in zf.infolist() if not info.is_dir()]
        try:
            with tarfile.open(fileobj=fh, mode="r:gz" if kind == "tgz" else "r:") as tf:
                names = [(info.name, info.size, info.offset if kind == "tar" else None)
                         for info in tf.getmembers() if info.isfile()]
                # gzip'd zeros read as an empty tar: take such a file as one input, never as none
                return None if kind == "tgz" and not names else names
        except tarfile.TarError:
            if kind == "tgz":
                return None
            raise


def read_source(ref: SourceRef, *, storage_options: dict | None = None, limits: ReadLimits = ReadLimits()) -> bytes:
    """The bytes of one input instance, bounded by ``limits`` (InputTooLargeError)."""
    fs, path = open_fs(ref.url, storage_options)
    size = fs.size(path) if ref.member is None else None
    if size is not None:
        limits.check_size(int(size))
    cache = "readahead"
    if ref.member is not None:
        with fs.open(path, "rb", block_size=HEAD_BYTES, cache_type="none") as fh:
            kind = _archive_kind(fh.read(HEAD_BYTES))
        if kind == "zip":
            zf = _zip_directory(fs, path)
            info = zf.getinfo(ref.member)
            limits.check_ratio(info.file_size, info.compress_size)
            with zf.open(info) as member:
                return _read_bounded(member, limits, compressed=info.compress_size)
        if kind == "tar" and ref.offset is not None:
            cache = "none"  # the first header, the member's and its data: each read is one request
    with fs.open(path, "rb", block_size=ARCHIVE_BLOCK, cache_type=cache) as fh:
        if ref.member is None:
            data = fh.read() if size is not None else _read_bounded(fh, limits, compressed=None)
            limits.check_size(len(data))
            if data.startswith(_GZIP_MAGIC):
                return _gunzip(data, limits)
            return data
        with tarfile.open(fileobj=fh, mode="r:gz" if kind == "tgz" else "r:") as tf:
            info = _tar_member_at(tf, ref) if kind == "tar" and ref.offset is not None else None
            if info is None:  # every header read up to the member's (a tar.gz, or a tar changed since listing)
                info = tf.getmember(ref.member)
            limits.check_size(info.size)
            member = tf.extractfile(info)
            if member is None:
                raise SourceError("archive member is not a regular file")
            return _read_bounded(member, limits, compressed=None)


# The zip directories this process read last, by (path, size, version): a zip's members
# are read one at a time, and reading its directory for each read it N times for N
# members (a zip of 10,000 instances holds about a megabyte of directory).
_ZIP_DIRECTORIES: OrderedDict[tuple, zipfile.ZipFile] = OrderedDict()
_ZIP_DIRECTORIES_KEPT = 8
_ZIP_DIRECTORIES_LOCK = threading.Lock()
_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "LastModified", "updated", "mtime")


def _zip_directory(fs, path: str) -> zipfile.ZipFile:
    """The zip at ``path`` with its directory read, over a file object that reads what is
    asked (no read-ahead: a member's header, then its data, in reads of 1 MiB). Kept for
    the next member while the object keeps its size and version (ETag, generation or
    mtime) and is one of the last ``_ZIP_DIRECTORIES_KEPT`` zips read; ZipFile reads its
    members from several threads at once under its own lock."""
    info = fs.info(path)
    version = next((str(info[k]) for k in _VERSION_KEYS if info.get(k) is not None), None)
    key = (fs.unstrip_protocol(path), info.get("size"), version)
    with _ZIP_DIRECTORIES_LOCK:
        if version is not None and key in _ZIP_DIRECTORIES:
            _ZIP_DIRECTORIES.move_to_end(key)
            return _ZIP_DIRECTORIES[key]
    fh = fs.open(path, "rb", block_size=HEAD_BYTES, cache_type="none")
    try:
        zf = zipfile.ZipFile(fh)
    except BaseException:
        fh.close()
        raise
    if version is not None:
        with _ZIP_DIRECTORIES_LOCK:
            _ZIP_DIRECTORIES[key] = zf
            while len(_ZIP_DIRECTORIES) > _ZIP_DIRECTORIES_KEPT:
                _ZIP_DIRECTORIES.popitem(last=False)  # its file closes when no read holds it
    return zf


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


def _read_bounded(stream: BinaryIO, limits: ReadLimits, *, compressed: int | None) -> bytes:
    """Read a (decompressing) stream in chunks, stopping as soon as it passes the limits;
    ``compressed`` is its compressed size, when known, for the ratio limit."""
    chunks, total = [], 0
    while True:
        chunk = stream.read(1 << 20)
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if compressed is None:
            limits.check_size(total)
        else:
            limits.check_ratio(total, compressed)
        chunks.append(chunk)


def _gunzip(data: bytes, limits: ReadLimits) -> bytes:
    """Inflate a gzip file (several members allowed) within the limits; bytes that are
    not valid gzip are returned as they are (a DICOM file that starts like gzip)."""
    out, total, at = [], 0, 0
    try:
        while at < len(data):
            inflater = zlib.decompressobj(wbits=31)
            pending = data[at:]
            while pending:
                chunk = inflater.decompress(pending, 1 << 20)
                total += len(chunk)
                limits.check_ratio(total, len(data) - len(inflater.unconsumed_tail))
                out.append(chunk)
                pending = inflater.unconsumed_tail
                if inflater.eof:
                    break
            if not inflater.eof:
                raise zlib.error("truncated gzip stream")
            at = len(data) - len(inflater.unused_data)
            if not inflater.unused_data.startswith(_GZIP_MAGIC):
                break
    except zlib.error:
        return data
    return b"".join(out)
