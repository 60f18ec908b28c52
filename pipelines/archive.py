"""The archive on object storage: layout, archive.json, keyed identifiers, index loading, cleanup.

Layout under the archive root (any fsspec URL):

    archive.json              format / schema versions, identity mode
    shards/<stem>.<run>.<sha16>.tar  records (one tar member per instance); named by the
                              run that wrote it and the first 16 hex of its SHA-256
    index/<stem>.parquet      one per shard stem, one row per record; names the one shard
                              file it describes; the shard's commit marker
    deadletter/<run>-<part>.parquet  inputs that could not be archived, with the reason
                              (one file per bundle of a run's workers)
    runs/<run>.json           run summaries
    audit/<id>.json           an audit's summary; audit/<id>/part-*.parquet its rows (one file per shard stem)
    models/<sha256>.safetensors  A-LoRA adapters used by records (content-addressed)
    models/adapters.json      which adapter codes which modality, with the fit's metrics

A shard's *stem* names its inputs (the study and the source keys and checksums of the
instances it holds), so any run or retried bundle that archives the same inputs commits
the same index file; its file name adds the writing run and the tar's own digest, so two
attempts never write the same file. Sealed records differ on every attempt (fresh nonce
and data key): a retried bundle, a zombie attempt or a second concurrent run each publish
their own tar, and each index file names the tar its rows were measured in.

Commit protocol: a shard is streamed to shards/.tmp-<run>.*, verified, moved to its
content name, then index/<stem>.parquet is written under index/.tmp-<run>.* and moved
into place (the last attempt to commit wins, whole). Each run holds a lease,
runs/<run>.live (host, pid, heartbeat), while it runs. Cleanup (at the start and end of
every migrate run) removes only files of runs that are not live (no lease, a local
process that is gone, or a heartbeat older than LEASE_SECONDS): their temporary files,
and their *superseded* shards (a stem whose index names another tar of the same stem: a
lost race). A published shard that no index names at all (its run died between the two
moves, or its index file was lost) is never deleted: it is kept and reported (audit:
"shard has no index"); re-running the same inputs commits that stem again.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from medcodec import FORMAT_MAJOR, FORMAT_MINOR
from schemas.tables import (
    AUDIT_SCHEMA_VERSION,
    DEADLETTER_SCHEMA_VERSION,
    INDEX_MAC_FIELDS,
    INDEX_SCHEMA,
    INDEX_SCHEMA_VERSION,
)

from .storage import makedirs_once, move_file, open_fs

ARCHIVE_LAYOUT_VERSION = 1
TMP_PREFIX = ".tmp-"
LEASE_SECONDS = 15 * 60  # a run whose heartbeat is older than this is taken as dead
HEARTBEAT_SECONDS = 60
CREATE_SETTLE_SECONDS = 2.0  # object stores: how long a new archive.json must stay ours


def shard_stem(name: str) -> str:
    """The stem of a shard file ("shards/<stem>.<run>.<sha16>.tar", "<stem>.tar", or a name
    from ``shard_names``): what its index file is named after."""
    name = name.rsplit("/", 1)[-1]
    if name.endswith(".tar"):
        name = name[: -len(".tar")]
    return name.split(".", 1)[0]


def shard_writer_run(name: str) -> str | None:
    """The run that wrote a content-named shard; None for a shard named before runs were."""
    parts = name.rsplit("/", 1)[-1].removesuffix(".tar").split(".")
    return parts[1] if len(parts) == 3 else None


class ArchiveError(Exception):
    """The archive is missing, inconsistent, or was written with another identity key."""


@dataclass(frozen=True)
class Identity:
    """Keyed hashing of identifiers: the only form in which UIDs and paths are stored."""

    key: bytes

    def hash(self, kind: str, value: str | bytes | None) -> str:
        raw = value.encode("utf-8") if isinstance(value, str) else (value or b"")
        return hmac.new(self.key, kind.encode() + b"\0" + raw, hashlib.sha256).hexdigest()[:32]

    def row_mac(self, row: dict) -> str:
        """The index row's authentication code: binds the record (its SHA-256) to its place
        (shard, offset, length) and its identity (keyed UIDs, source); a row moved to another
        record, or edited, no longer verifies. Keyless archives keep their key (the salt) in
        archive.json, so there it proves only that the index is consistent."""
        canonical = json.dumps([row[f] for f in INDEX_MAC_FIELDS], separators=(",", ":"))
        return hmac.new(self.key, b"medarchive/index-row/v1\0" + canonical.encode(), hashlib.sha256).hexdigest()[:32]

    def manifest_mac(self, run_id: str, index_files: list[str]) -> str:
        """Authentication code of the list of index files a run committed (runs/<id>.json)."""
        canonical = json.dumps([run_id, sorted(index_files)], separators=(",", ":"))
        return hmac.new(self.key, b"medarchive/index-manifest/v1\0" + canonical.encode(), hashlib.sha256).hexdigest()[:32]

    def row_verifies(self, row: dict) -> bool | None:
        """True / False; None for a row written before index rows carried a MAC."""
        if not row.get("row_mac"):
            return None
        return hmac.compare_digest(row["row_mac"], self.row_mac(row))

    @property
    def check(self) -> str:
        """A value stored in archive.json that tells whether a later run uses the same key."""
        return self.hash("identity-check", b"medarchive")


def _as_index_schema(table: pa.Table) -> pa.Table:
    """An index table in the current schema; columns added since its version are null."""
    for f in INDEX_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table.select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)


class Archive:
    """An archive root on any fsspec filesystem."""

    def __init__(self, url: str, *, storage_options: dict | None = None, owner: str | None = None) -> None:
        self.owner = owner  # the run whose temporary files this instance writes (in their names)
        self.url = url.rstrip("/")
        self.fs, self.root = open_fs(self.url, storage_options)
        self.root = self.root.rstrip("/")
        self._made: set[str] = set()  # folders this instance made (``makedirs``)

    # --- paths -------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self) -> bool:
        return self.fs.exists(self.path("archive.json"))

    # --- archive.json ------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        try:
            with self.fs.open(self.path("archive.json"), "rb") as fh:
                return json.loads(fh.read())
        except FileNotFoundError:
            raise ArchiveError(f"{self.url} is not a medarchive archive (no archive.json)") from None

    def open_or_create(self, *, key: bytes | None, key_mode: str) -> Identity:
        """Identity for this archive; creates archive.json on first use.

        With a keyring the identity key comes from it and archive.json stores only a
        check value; without one a random per-archive salt is stored (pseudonymous ids).
        """
        if self.exists():
            manifest = self.read_manifest()
            ident = manifest.get("identity", {})
            if ident.get("mode") == "archive-salt":
                if key is not None:
                    raise ArchiveError("archive was created without a key file; run it without --key-file")
                identity = Identity(bytes.fromhex(ident["salt"]))
            else:
                if key is None:
                    raise ArchiveError("archive was created with a key file; pass --key-file")
                identity = Identity(key)
                if identity.check != ident.get("check"):
                    raise ArchiveError("the key file does not belong to this archive (identity check differs)")
            return identity
        if self.index_names() or self.shard_names():
            raise ArchiveError(f"{self.url} holds shards or index files but no archive.json: it is not created again"
                               " silently; run `medarchive repair` to rebuild it")
        if key is None:
            salt = secrets.token_bytes(32)
            ident = {"mode": "archive-salt", "salt": salt.hex(),
                     "note": "identifiers are HMACs under this salt: anyone who can read this file can confirm a"
                             " guessed UID or path; they are not pseudonyms (a keyring keeps the key out)"}
        else:
            ident = {"mode": key_mode, "check": Identity(key).check}
        if not self.create_manifest(ident):  # another run created it first: take its identity
            return self.open_or_create(key=key, key_mode=key_mode)
        return Identity(bytes.fromhex(ident["salt"])) if key is None else Identity(key)

    def create_manifest(self, ident: dict) -> bool:
        """Create archive.json unless it exists; False when another run created it first.

        Two first runs started together into a new DST must agree on one identity (a keyless
        archive's salt is random). On a local disk the file is linked into place, which fails
        when it exists; on an object store (no create-if-absent across stores) it is written,
        then read back after CREATE_SETTLE_SECONDS: a run whose file was overwritten meanwhile
        takes the other's. Workers read archive.json only after this returns."""
        data = self._manifest_bytes(ident)
        self.fs.makedirs(self.root, exist_ok=True)
        protocols = set(self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else [self.fs.protocol])
        if protocols & {"file", "local"}:
            tmp = os.path.join(self.root, f"{self.tmp_name()}-archive.json")
            with open(tmp, "wb") as fh:
                fh.write(data)
            try:
                os.link(tmp, os.path.join(self.root, "archive.json"))
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        self.write_atomic("archive.json", data)
        if "memory" in protocols:
            return True  # one process: nobody else can write it
        time.sleep(CREATE_SETTLE_SECONDS)
        self.fs.invalidate_cache()
        return self.read_manifest().get("identity") == ident

    def write_manifest(self, ident: dict) -> None:
        """Write archive.json with this identity section and the current versions."""
        self.fs.makedirs(self.root, exist_ok=True)
        self.write_atomic("archive.json", self._manifest_bytes(ident))

    @staticmethod
    def _manifest_bytes(ident: dict) -> bytes:
        manifest = {
            "layout_version": ARCHIVE_LAYOUT_VERSION,
            "format_version": f"{FORMAT_MAJOR}.{FORMAT_MINOR}",
            "schemas": {
                "index": INDEX_SCHEMA_VERSION,
                "deadletter": DEADLETTER_SCHEMA_VERSION,
                "audit": AUDIT_SCHEMA_VERSION,
            },
            "identity": ident,
        }
        return json.dumps(manifest, indent=2, sort_keys=True).encode()

    # --- atomic writes -----------------------------------------------------------------
    def makedirs(self, folder: str) -> None:
        """``fs.makedirs(folder, exist_ok=True)``, once per folder for this instance
        (``storage.makedirs_once``)."""
        makedirs_once(self.fs, folder, self._made)

    def move(self, tmp: str, final: str) -> None:
        """``storage.move_file``: a rename, or on an object store one copy and one delete."""
        move_file(self.fs, tmp, final)

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write under a temporary name in the same folder, then move into place."""
        folder, _, name = rel.rpartition("/")
        tmp = self.path(*(p for p in (folder, f"{self.tmp_name()}-{name}") if p))
        final = self.path(rel)
        self.makedirs(os.path.dirname(final) or self.root)
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
        self.move(tmp, final)

    def write_table(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        # Without dictionary pages: the index files of the pipeline benchmark's migrate (21
        # shards of 1-11 rows) took 28.9 ms to write instead of 21.8 ms, 269,434 B instead
        # of 243,449 (pyarrow's default dictionary encoding adds a page per column). The
        # column statistics stay: readers such as DuckDB skip files by them.
        pq.write_table(table, buf, compression="zstd", use_dictionary=False)
        self.write_atomic(rel, buf.getvalue())

    # --- reading ------------------------------------------------------------------------
    def _list(self, folder: str, suffix: str) -> list[str]:
        base = self.path(folder)
        if not self.fs.exists(base):
            return []
        names = []
        for p in self.fs.ls(base, detail=False):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if name.endswith(suffix) and not name.startswith(TMP_PREFIX):
                names.append(name)
        return sorted(names)

    def committed_index_files(self, identity: Identity | None) -> tuple[set[str], list[dict]]:
        """(names of every index file that runs say they committed, problems): the union of
        runs/<id>.json ``index_files``; a run summary whose list fails its MAC is a problem
        (not trusted). Runs written before these manifests list nothing."""
        names: set[str] = set()
        problems = []
        for rel in sorted(self._list("runs", ".json")):
            try:
                with self.fs.open(self.path("runs", rel), "rb") as fh:
                    run = json.loads(fh.read())
            except (OSError, ValueError) as exc:
                problems.append({"file": f"runs/{rel}", "reason": f"unreadable ({type(exc).__name__})"})
                continue
            listed = run.get("index_files")
            if listed is None:
                continue
            if identity is not None and not hmac.compare_digest(
                    str(run.get("index_files_mac", "")), identity.manifest_mac(run.get("run_id", ""), listed)):
                problems.append({"file": f"runs/{rel}", "reason": "its list of index files fails its authentication code"})
                continue
            names.update(listed)
        return names, problems

    def index_names(self) -> list[str]:
        return [n[: -len(".parquet")] for n in self._list("index", ".parquet")]

    def check_index_files(self, names: list[str], *, threads: int = 16) -> None:
        """Raise ArchiveError naming the first index file whose parquet footer does not read
        (a junk or truncated file), reading only the footers, several at a time: what a run
        checks before it starts, without reading any rows."""
        from concurrent.futures import ThreadPoolExecutor

        def footer(name: str) -> str | None:
            try:
                with self.fs.open(self.path("index", f"{name}.parquet"), "rb") as fh:
                    pq.read_metadata(fh)
            except Exception as exc:  # noqa: BLE001 - named in the error below
                return f"index/{name}.parquet is unreadable ({type(exc).__name__})"
            return None

        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(names)))) as pool:
            for problem in pool.map(footer, names):
                if problem:
                    raise ArchiveError(f"index file {problem}; run `medarchive audit` on DST")

    def shard_names(self) -> list[str]:
        return [n[: -len(".tar")] for n in self._list("shards", ".tar")]

    def read_index(self, names: list[str] | None = None) -> pa.Table:
        """Every index row; an unreadable index file raises ArchiveError naming it."""
        table, bad = self.read_index_reporting(names)
        if bad:
            raise ArchiveError(f"index file {bad[0]['file']} is unreadable ({bad[0]['reason']})")
        return table

    def read_index_reporting(self, names: list[str] | None = None) -> tuple[pa.Table, list[dict]]:
        """(index rows, problems): rows of every readable index file, each record once;
        a problem ({"file", "reason"}) for each index file that cannot be read, that
        describes another shard than its own name says (a copied or moved file: its rows
        are left out), or that repeats rows another file holds (counted once)."""
        tables, bad, seen = [], [], set()
        for name in self.index_names() if names is None else names:
            rel = f"index/{name}.parquet"
            try:
                with self.fs.open(self.path("index", f"{name}.parquet"), "rb") as fh:
                    table = _as_index_schema(pq.read_table(fh))
            except Exception as exc:  # noqa: BLE001 - a damaged index file is reported by name
                bad.append({"file": rel, "reason": f"unreadable ({type(exc).__name__})"})
                continue
            shards = set(table.column("shard").to_pylist())
            if table.num_rows and (len(shards) != 1 or shard_stem(next(iter(shards))) != name):
                bad.append({"file": rel, "reason": f"describes {', '.join(sorted(shards))}, not one shard of stem {name}"})
                continue
            places = list(zip(table.column("shard").to_pylist(), table.column("offset").to_pylist()))
            fresh = [p not in seen for p in places]
            if not all(fresh):
                bad.append({"file": rel, "reason": f"repeats {fresh.count(False)} row(s) of another index file"})
                table = table.filter(pa.array(fresh))
            seen.update(places)
            tables.append(table)
        if not tables:
            return INDEX_SCHEMA.empty_table(), bad
        return pa.concat_tables(tables), bad

    def read_deadletters(self, *, indexed: set[str] | None = None) -> list[dict]:
        """The inputs that are dead-lettered now: one row per input (source_key), the newest
        run's reason; inputs indexed since (``indexed``: source keys, read from the index
        when None) are left out. The deadletter/<run>-<part>.parquet files are the per-run log."""
        if indexed is None:
            indexed = set(self.read_index().column("source_key").to_pylist())
        latest: dict[str, dict] = {}
        for table in self.read_tables("deadletter"):
            for row in table.to_pylist():
                if row["source_key"] not in indexed:
                    known = latest.get(row["source_key"])
                    if known is None or row["run_id"] >= known["run_id"]:  # run ids sort by start time
                        latest[row["source_key"]] = row
        return sorted(latest.values(), key=lambda r: r["source_key"])

    def read_tables(self, folder: str) -> list[pa.Table]:
        out = []
        for name in self._list(folder, ".parquet"):
            with self.fs.open(self.path(folder, name), "rb") as fh:
                out.append(pq.read_table(fh))
        return out

    # --- models/ -------------------------------------------------------------------------
    def model_path(self, sha256: str) -> str:
        return self.path("models", f"{sha256}.safetensors")

    def write_model(self, blob: bytes) -> str:
        """Store a model/adapter file once under its SHA-256; returns the hash."""
        sha = hashlib.sha256(blob).hexdigest()
        if not self.fs.exists(self.model_path(sha)):
            self.write_atomic(f"models/{sha}.safetensors", blob)
        return sha

    def model_hashes(self) -> list[str]:
        return [n[: -len(".safetensors")] for n in self._list("models", ".safetensors")]

    def read_model(self, sha256: str) -> bytes:
        """The stored file; raises ArchiveError when it is missing or its bytes do not match."""
        try:
            with self.fs.open(self.model_path(sha256), "rb") as fh:
                blob = fh.read()
        except FileNotFoundError:
            raise ArchiveError(f"models/{sha256}.safetensors is missing") from None
        if hashlib.sha256(blob).hexdigest() != sha256:
            raise ArchiveError(f"models/{sha256}.safetensors does not match its SHA-256")
        return blob

    def model_store(self):
        """A medcodec.ModelStore holding every intact adapter under models/ (what decoding the
        archive's records needs, passed to the codec, never registered process-wide). A bad
        file fails only the records that name it (audit reports it)."""
        import medcodec

        store = medcodec.ModelStore()
        for sha in self.model_hashes():
            try:
                store.add_adapter(self.read_model(sha))
            except (ArchiveError, medcodec.MedcodecError):
                continue
        return store

    def read_record(self, shard: str, offset: int, length: int) -> bytes:
        with self.fs.open(self.path(shard), "rb") as fh:
            fh.seek(offset)
            return fh.read(length)

    # --- cleanup (start of every run) ----------------------------------------------------
    def tmp_name(self) -> str:
        """A temporary file name that names its run: .tmp-<run>.<random>."""
        return f"{TMP_PREFIX}{self.owner or 'anonymous'}.{secrets.token_hex(6)}"

    # --- run leases ----------------------------------------------------------------------
    def hold_lease(self, run_id: str) -> None:
        """Write (or refresh) runs/<run>.live: this run is alive; its temporary files stay."""
        lease = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time()}
        self.makedirs(self.path("runs"))
        with self.fs.open(self.path("runs", f"{run_id}.live"), "wb") as fh:
            fh.write(json.dumps(lease).encode())

    def release_lease(self, run_id: str) -> None:
        try:
            self.fs.rm(self.path("runs", f"{run_id}.live"))
        except FileNotFoundError:
            pass

    def live_runs(self, *, now: float | None = None) -> set[str]:
        """Run ids holding a lease that is still good."""
        now = time.time() if now is None else now
        live = set()
        base = self.path("runs")
        if not self.fs.exists(base):
            return live
        for p in self.fs.ls(base, detail=False):
            name = p.rstrip("/").rsplit("/", 1)[-1]
            if not name.endswith(".live"):
                continue
            try:
                with self.fs.open(p, "rb") as fh:
                    lease = json.loads(fh.read())
            except (OSError, ValueError):
                continue
            if _lease_alive(lease, now):
                live.add(name[: -len(".live")])
        return live

    def clean_uncommitted(self) -> dict[str, int]:
        """Delete the temporary files and superseded shards of runs that are not live; count
        (and keep) published shards that no index names."""
        removed = {"temporary": 0, "superseded": 0, "unindexed_shards": 0}
        live = self.live_runs()
        folders = ["shards", "index", "deadletter", "runs", "audit", ""]
        if self.fs.exists(self.path("audit")):  # an audit's part files sit in audit/<id>/
            folders += [f"audit/{e['name'].rstrip('/').rsplit('/', 1)[-1]}"
                        for e in self.fs.ls(self.path("audit"), detail=True) if e.get("type") == "directory"]
        for folder in folders:
            base = self.path(folder) if folder else self.root
            if not self.fs.exists(base):
                continue
            for p in self.fs.ls(base, detail=False):
                name = p.rstrip("/").rsplit("/", 1)[-1]
                if name.startswith(TMP_PREFIX) and name[len(TMP_PREFIX):].split(".", 1)[0] not in live:
                    self.fs.rm(p)
                    removed["temporary"] += 1
        committed = set(self.index_names())
        by_stem: dict[str, list[str]] = {}
        for shard in self.shard_names():
            by_stem.setdefault(shard_stem(shard), []).append(shard)
        for stem, shards in sorted(by_stem.items()):
            if stem not in committed:
                removed["unindexed_shards"] += len(shards)
                continue
            if len(shards) == 1:
                continue
            named = self.indexed_shard(stem)
            for shard in shards:
                if f"shards/{shard}.tar" == named:
                    continue
                writer = shard_writer_run(shard)
                if writer is not None and writer in live:
                    continue  # its run may still commit it
                if named is not None and writer is not None:
                    self.fs.rm(self.path("shards", f"{shard}.tar"))
                    removed["superseded"] += 1
                else:  # a shard named before runs were, or nothing says which tar is current: kept
                    removed["unindexed_shards"] += 1
        return removed

    def indexed_shard(self, stem: str) -> str | None:
        """The shard file that index/<stem>.parquet names ("shards/<...>.tar"); None when it
        names none or does not read."""
        try:
            with self.fs.open(self.path("index", f"{stem}.parquet"), "rb") as fh:
                shards = set(pq.read_table(fh, columns=["shard"]).column("shard").to_pylist())
        except Exception:  # noqa: BLE001 - an unreadable index: nothing is deleted on its word
            return None
        return next(iter(shards)) if len(shards) == 1 else None


def archive_identity(manifest: dict, key_file: str | None) -> Identity | None:
    """The identity key of an archive: its salt (keyless archives), the keyring's identity key
    (checked against archive.json), or None for a keyring archive when no key file is given."""
    ident = manifest.get("identity", {})
    if ident.get("mode") == "archive-salt":
        return Identity(bytes.fromhex(ident["salt"]))
    if not key_file:
        return None
    from .keys import identity_key_from

    identity = Identity(identity_key_from(key_file))
    if identity.check != ident.get("check"):
        raise ArchiveError("the key file does not belong to this archive (identity check differs)")
    return identity


def _lease_alive(lease: dict, now: float) -> bool:
    """A lease is good while its heartbeat is fresh; on this host, only while its process lives
    (a run killed here frees its files at once)."""
    if now - float(lease.get("heartbeat", 0)) > LEASE_SECONDS:
        return False
    if lease.get("host") == socket.gethostname():
        try:
            os.kill(int(lease.get("pid", 0)), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, OverflowError):
            return True  # another user's live process, or nothing to check
    return True
