"""Listing and reading archive inputs with fsspec: plain files and zip / tar(.gz) members.

Beam's own file matching does not understand fsspec URLs, so listing and reading
happen here, inside DoFns. A source is a file URL, optionally with a member name
inside a zip or tar archive.
"""

from __future__ import annotations

import tarfile
import zipfile
from dataclasses import dataclass
from typing import Iterator

import fsspec

_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, order=True)
class SourceRef:
    """One input instance: a file, or a member of a zip/tar archive."""

    url: str
    member: str | None = None

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

    Yields SourceRef, or (SourceRef, error) for an archive that cannot be listed.
    """
    fs, root = fsspec.core.url_to_fs(src, **(storage_options or {}))
    paths = [root] if fs.isfile(root) else sorted(fs.find(root))
    for path in paths:
        url = fs.unstrip_protocol(path)
        try:
            with fs.open(path, "rb") as fh:
                head = fh.read(512)
            kind = _archive_kind(head)
            members = None if kind is None else _archive_members(fs, path, kind)
        except Exception as exc:  # an unreadable archive is a dead letter, never a crash
            yield SourceRef(url), exc
            continue
        if members is None:
            yield SourceRef(url)
        else:
            for member in members:
                yield SourceRef(url, member)


def _archive_members(fs, path: str, kind: str) -> list[str] | None:
    """Member names of a zip/tar archive; None for a gzip file that holds no tar (one file)."""
    with fs.open(path, "rb") as fh:
        if kind == "zip":
            with zipfile.ZipFile(fh) as zf:
                return [info.filename for info in zf.infolist() if not info.is_dir()]
        try:
            with tarfile.open(fileobj=fh, mode="r:gz" if kind == "tgz" else "r:") as tf:
                return [info.name for info in tf.getmembers() if info.isfile()]
        except tarfile.TarError:
            if kind == "tgz":
                return None
            raise


def read_source(ref: SourceRef, *, storage_options: dict | None = None) -> bytes:
    """The bytes of one input instance."""
    fs, path = fsspec.core.url_to_fs(ref.url, **(storage_options or {}))
    with fs.open(path, "rb") as fh:
        if ref.member is None:
            data = fh.read()
            if data.startswith(_GZIP_MAGIC):
                return _gunzip(data)
            return data
        head = fh.read(512)
        fh.seek(0)
        kind = _archive_kind(head)
        if kind == "zip":
            with zipfile.ZipFile(fh) as zf:
                return zf.read(ref.member)
        with tarfile.open(fileobj=fh, mode="r:gz" if kind == "tgz" else "r:") as tf:
            member = tf.extractfile(ref.member)
            if member is None:
                raise SourceError("archive member is not a regular file")
            return member.read()


def _gunzip(data: bytes) -> bytes:
    import gzip

    try:
        return gzip.decompress(data)
    except (OSError, EOFError):
        return data
