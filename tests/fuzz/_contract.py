"""What a fuzz finding is: the contract every reader's errors are checked against.

Used by the harnesses (_common.check_error) and by tests/test_fuzz.py; imports no atheris.
A finding is:

* an exception that is not a ``medcodec.MedcodecError`` (a traceback a user would see);
* a MedcodecError raised because memory ran out (a ``MemoryError`` anywhere in its chain:
  an allocation the memory budget did not bound, caught by the harness's RLIMIT_AS);
* a MedcodecError whose message is not one short line, quotes input bytes (a run of 8+
  characters of the input that is neither medcodec's own text nor only digits, hex and
  punctuation; a record's config identifiers, the codec / model / mode names, may be
  quoted) or key material;
* an input whose own peak resident memory exceeded what the process held when it began
  by more than ``PEAK_GROWTH_LIMIT`` (``peak_growth``): an allocation the budget did not
  bound that stayed under RLIMIT_AS and libFuzzer's RSS limit, which are set for the
  harness as a whole and do not see one input's spike;
* with ``strict``: a MedcodecError that only a catch-all boundary produced
  (errors.record_errors, parse_dicom's, the DICOM rebuild's), i.e. a foreign exception
  raised somewhere no check stopped the bad value.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import traceback
from pathlib import Path

import medcodec
import medcodec.container

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
KEYRING_PATH = GOLDEN / "test-keyring.json"


class Finding(AssertionError):
    """An input broke the readers' contract (see the module docstring)."""


def _source_text() -> str:
    # every module, subpackages too (the coder ids live in medcodec/coders/)
    return "\n".join(p.read_text() for p in sorted((ROOT / "medcodec").rglob("*.py")))


# Library messages that medcodec's messages include (lzma's, json's, struct's): fixed text
# that a section's bytes may happen to contain.
_LIBRARY_TEXT = """
Compressed data ended before the end-of-stream marker was reached. Input format not supported by decoder.
Corrupt input data. Memory usage limit was reached. Unsupported integrity check. Invalid or unsupported options.
Expecting value. Expecting property name enclosed in double quotes. Expecting ':' delimiter. Expecting ','
delimiter. Unterminated string starting at. Invalid control character at. Invalid \\escape. Extra data.
unpack_from requires a buffer of at least. bytes for unpacking. actual buffer size is.
"""
_SOURCE_TEXT = _source_text() + _LIBRARY_TEXT
_SOURCE_WORDS = frozenset(re.findall(r"[A-Za-z]+", _SOURCE_TEXT))
# Runs that may coincide with input: numbers, sizes, offsets, UIDs, hex digests, key ids.
_HARMLESS = re.compile(r"[0-9a-f\s.,:;()\[\]=<>/x*+#'\"-]*")
_BYTES_REPR = re.compile(r"\\x[0-9a-fA-F]{2}")


def _secrets() -> list[str]:
    """Key material of the test keyring as it could show up in a message (base64, hex)."""
    obj = json.loads(KEYRING_PATH.read_text())
    found = []

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and len(value) >= 40:
            try:
                raw = base64.b64decode(value, validate=True)
            except ValueError:
                return
            found.extend([value[:16], raw.hex()[:16]])

    walk(obj)
    return found


_SECRETS = _secrets()


_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def quoted_input(message: str, data: bytes, min_len: int = 8, identifiers_from: str = "") -> list[str]:
    """Runs of ``min_len``+ characters of ``message`` that also occur in ``data`` (read as
    latin-1) and are neither medcodec's own text nor harmless (digits, hex, punctuation).
    Identifier-shaped runs (codec, model, mode names) that occur in ``identifiers_from`` (a
    record's config text) are allowed too. A record's config counts as input in either form:
    a deflated config's text is searched too, as a plain one's is with the record's bytes."""
    text = data.decode("latin-1") + "\0" + _config_text(data)
    found = []
    i = 0
    while i <= len(message) - min_len:
        j = i + min_len
        if message[i:j] not in text:
            i += 1
            continue
        while j < len(message) and message[i : j + 1] in text:
            j += 1
        run = message[i:j]
        harmless = _HARMLESS.fullmatch(run) or run.strip(" '\":;,.()") in _SOURCE_TEXT or _template_words(run)
        if not harmless and not (_IDENTIFIER.fullmatch(run) and f'"{run}"' in identifiers_from):
            found.append(run)
        i = j
    return found


def _template_words(run: str) -> bool:
    """A short run of words medcodec's messages use, numbers and punctuation ("92 bytes")."""
    return (len(run) <= 24 and re.fullmatch(r"[A-Za-z0-9\s.,:;()=/'-]*", run) is not None
            and all(w in _SOURCE_WORDS for w in re.findall(r"[A-Za-z]+", run)))


def chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _config_text(data: bytes) -> str:
    """The config JSON of a record (when ``data`` looks like one), for quoted_input: the
    first section's payload, inflated when it is a config-deflate section."""
    ct = medcodec.container
    if not data.startswith(ct.MAGIC) or len(data) < 40:
        return ""
    (stype,) = struct.unpack_from("<H", data, 20)
    (length,) = struct.unpack_from("<Q", data, 28)
    payload = data[36 : 36 + min(length, len(data))]
    if stype == ct.SECTION_CONFIG_DEFLATE:
        try:
            payload = ct.inflate_config(payload)
        except medcodec.MedcodecError:
            return ""
    return payload.decode("latin-1")


def check_error(exc: BaseException, data: bytes, what: str, *, strict: bool = False) -> None:
    """Raise Finding unless ``exc`` is a typed, one-line error that quotes nothing."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        raise exc
    if not isinstance(exc, medcodec.MedcodecError):
        raise Finding(f"{what}: untyped {type(exc).__name__} escaped") from exc
    if any(isinstance(e, MemoryError) for e in chain(exc)):
        raise Finding(f"{what}: ran out of memory ({type(exc).__name__}: {exc})") from exc
    message = str(exc)
    if not message.strip() or "\n" in message or "\r" in message or len(message) > 500:
        raise Finding(f"{what}: {type(exc).__name__} message is not one short line: {message[:300]!r}") from exc
    quoted = quoted_input(message, data, identifiers_from=_config_text(data))
    if quoted or _BYTES_REPR.search(message):
        raise Finding(f"{what}: {type(exc).__name__} message quotes input {quoted}: {message!r}") from exc
    if any(s in message for s in _SECRETS):
        raise Finding(f"{what}: {type(exc).__name__} message contains key material") from exc
    if strict and _CATCH_ALL.search(message):
        foreign = next((e for e in chain(exc) if not isinstance(e, medcodec.MedcodecError)), None)
        raise Finding(f"{what}: only a catch-all typed this {type(foreign).__name__}: {message}") from foreign


# The boundaries that type whatever else escapes (errors.record_errors, parse_dicom,
# decompress_dicom's and rebuild_dicom's rebuild): strict reports what they caught, to find
# a bad value inside the codec that no check stopped where it entered.
_CATCH_ALL = re.compile(r"record cannot be decoded: \w+ in |could not parse DICOM input \(|could not rebuild")


# Four times the readers' memory budget (_common.MEMORY_BUDGET, 256 MiB). A DICOM campaign
# (2026-12-07) ran past one input whose JPEG-LS frame declared 0 lines: the process's peak
# went from 409 to 1,939 MB, under every limit then set, and nothing was reported (the
# reader now refuses such frames: medcodec.dicom.encapsulation).
PEAK_GROWTH_LIMIT = 1 << 30


def peak_growth(before_kb: int, after_kb: int, what: str, limit: int = PEAK_GROWTH_LIMIT) -> Finding | None:
    """The finding for an input whose peak resident memory (``after_kb``, KiB) exceeded
    the resident memory it started with (``before_kb``) by more than ``limit`` bytes;
    else None."""
    grown = (after_kb - before_kb) << 10
    if grown <= limit:
        return None
    return Finding(f"{what}: one input raised peak memory by {grown >> 20} MB (limit {limit >> 20} MB)")


def signature(finding: Finding) -> str:
    """What a finding is, for counting: the check, the exception type, and where the
    exception behind it was raised (innermost frame; innermost medcodec frame too)."""
    frames = []
    for e in chain(finding.__cause__) if finding.__cause__ is not None else ():
        frames = traceback.extract_tb(e.__traceback__) or frames
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    ours = [f for f in frames if "/medcodec/" in f.filename]
    if ours and ours[-1] is not frames[-1]:
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno} -> {where}"
    head = re.sub(r"\[.*?\]|'.*?'|\".*?\"|\(.*?\)|\d+", "_", str(finding))[:120]
    return f"{head} | {where}"
