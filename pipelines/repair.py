"""The repair job: rebuild what an archive lost from what it still holds, and say so.

``archive.json`` (format versions and the identity section) is rebuilt for an archive
written with a keyring: the key file given must be the archive's, which is proved by the
index rows' MACs (or, for rows written before MACs, by decoding one record with the key
and hashing its SOP Instance UID as its row's key). A keyless archive kept its salt only
in archive.json: without it, UIDs cannot be looked up again, and repair says so rather
than inventing a new salt (``restore`` of every record still works).
"""

from __future__ import annotations

import json

from .archive import Archive, ArchiveError, Identity


def run_repair(archive_url: str, *, key_file: str | None = None, storage_options: dict | None = None) -> dict:
    """Rebuild ``archive.json``; returns what was done and the evidence."""
    archive = Archive(archive_url, storage_options=storage_options)
    if archive.exists():
        archive.read_manifest()
        return {"archive_json": "present", "rebuilt": False, "evidence": "archive.json reads; nothing to repair"}
    table, problems = archive.read_index_reporting()
    rows = table.to_pylist()
    if not rows:
        raise ArchiveError(f"{archive_url}: no archive.json and no readable index rows: nothing to rebuild from")
    if not key_file:
        raise ArchiveError(
            "archive.json is gone; an archive written with a key file is rebuilt with it (--key-file); a keyless"
            " archive kept its salt only there, so its UIDs cannot be looked up again (restore of everything still"
            " works)")
    from .keys import load_keyring

    keyring = load_keyring(key_file)
    identity = Identity(keyring.uid_key())
    evidence = _prove(archive, identity, keyring, rows)
    archive.write_manifest({"mode": "keyring", "check": identity.check})
    return {"archive_json": "rebuilt", "rebuilt": True, "evidence": evidence, "index_rows": len(rows),
            "index_problems": problems}


def _prove(archive: Archive, identity: Identity, keyring, rows: list[dict]) -> str:
    """Evidence that ``identity`` is the archive's, or ArchiveError."""
    verdicts = [identity.row_verifies(r) for r in rows]
    if any(v is True for v in verdicts):
        if any(v is False for v in verdicts):
            raise ArchiveError("some index rows verify under this key and some do not: the index was altered;"
                               " run `audit` with the key after repair")
        return f"{sum(v is True for v in verdicts)} index row MAC(s) verify under the key file"
    if any(v is False for v in verdicts):
        raise ArchiveError("the key file does not belong to this archive: its index rows' MACs do not verify")
    import io

    import pydicom

    import medcodec

    row = rows[0]
    with archive.fs.open(archive.path(row["shard"]), "rb") as fh:
        fh.seek(row["offset"])
        original = medcodec.decompress_dicom(fh.read(row["length"]), keyring=keyring)
    sop = str(pydicom.dcmread(io.BytesIO(original), stop_before_pixels=True, force=True).get("SOPInstanceUID", ""))
    if identity.hash("sop", sop) != row["sop_key"]:
        raise ArchiveError("the key file does not belong to this archive: a record's UID does not hash to its row")
    return "a record decoded with the key file hashes to its index row (rows written before MACs)"


def format_repair(summary: dict) -> str:
    return json.dumps(summary, indent=2)
