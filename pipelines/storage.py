"""Opening object storage with bounded waits: connect and read timeouts and a bounded number
of retries on every fsspec call, so a stalled or unreachable endpoint ends a job with one
clear error instead of hanging.

s3fs retries a timed-out call 5 times by default, each with botocore's own retries inside
and 15 s read timeouts: a paused endpoint held a migrate for more than 500 s. Here a call
is tried ``retries`` times in all (s3fs's loop; botocore's is one attempt), each waiting at
most ``connect`` s to connect and ``read`` s for data: ``StorageTimeouts.bound`` seconds.
The settings travel in the storage options under ``IO_KEY`` so that workers open their
filesystems the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import fsspec

IO_KEY = "medarchive_io"
_S3 = {"s3", "s3a"}


@dataclass(frozen=True)
class StorageTimeouts:
    """Per-call limits for object storage (seconds, tries)."""

    connect: float = 10.0
    read: float = 60.0
    retries: int = 3

    def __post_init__(self) -> None:
        if not (self.connect > 0 and self.read > 0 and self.retries >= 1):
            raise ValueError(f"storage timeouts must be positive and retries >= 1, got {self}")

    @property
    def bound(self) -> float:
        """Longest one call can take before it fails (retries x (connect + read) + backoff)."""
        backoff = sum(min(1.7**i * 0.1, 15) for i in range(self.retries))
        return self.retries * (self.connect + self.read) + backoff


def with_timeouts(storage_options: dict | None, timeouts: StorageTimeouts) -> dict:
    """``storage_options`` carrying ``timeouts`` for every filesystem opened with ``open_fs``."""
    return {**(storage_options or {}), IO_KEY: asdict(timeouts)}


# Storage option names whose values are secrets (s3fs, gcsfs, adlfs and botocore spellings).
CREDENTIAL_KEYS = frozenset({
    "key", "secret", "token", "password", "session_token", "aws_access_key_id", "aws_secret_access_key",
    "aws_session_token", "account_key", "sas_token", "connection_string", "client_secret", "credentials",
})
ENV_PREFIX = "env:"
_TOKEN_MODES = {"anon", "google_default", "cloud", "browser", "cache"}  # gcsfs token= modes, not secrets


class CredentialsError(ValueError):
    """Storage options hold a secret that would travel in a job graph."""


def resolve_options(options: Any) -> Any:
    """``options`` with every "env:NAME" string replaced by that environment variable, read
    here (on the worker): how credentials reach workers without entering the job graph."""
    if isinstance(options, dict):
        return {k: resolve_options(v) for k, v in options.items()}
    if isinstance(options, list):
        return [resolve_options(v) for v in options]
    if isinstance(options, str) and options.startswith(ENV_PREFIX):
        name = options[len(ENV_PREFIX):]
        if not os.environ.get(name):
            raise CredentialsError(f"a storage option refers to {options}, which is not set on this worker")
        return os.environ[name]
    return options


def _literal_credentials(options: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(options, dict):
        for k, v in options.items():
            where = f"{path}.{k}" if path else str(k)
            if str(k).lower() in CREDENTIAL_KEYS and v not in (None, "", False) and not (
                    isinstance(v, str) and (v.startswith(ENV_PREFIX) or v in _TOKEN_MODES)):
                found.append(where)
            else:
                found.extend(_literal_credentials(v, where))
    return found


def worker_storage_options(storage_options: dict | None, *, local: bool) -> dict:
    """The storage options a job's workers get (they travel in the job graph): no secrets.

    A literal credential (``key``, ``secret``, ``token``, ...) is moved into an environment
    variable of this process and replaced by its "env:NAME" reference, which workers resolve
    (resolve_options). Local runners' workers are this process or its children and inherit
    it; a remote runner's workers do not, so there a literal credential is refused: give
    the workers credentials by their environment (AWS_* variables, a service account, a
    profile) or write "env:NAME" yourself."""
    found = _literal_credentials(storage_options or {})
    if not found:
        return dict(storage_options or {})
    if not local:
        raise CredentialsError(
            f"storage option {found[0]} holds a secret that a remote runner would ship in the job graph: give"
            f" the workers credentials by their environment, or pass \"{ENV_PREFIX}NAME\" and set NAME on every worker")

    def move(options: Any, path: str = "") -> Any:
        if not isinstance(options, dict):
            return options
        out = {}
        for k, v in options.items():
            where = f"{path}.{k}" if path else str(k)
            if where in found:
                if not isinstance(v, str):
                    raise CredentialsError(f"storage option {where} is a secret that is not a string: give the"
                                           " workers credentials by their environment instead")
                name = "MEDARCHIVE_SO_" + hashlib.sha256(where.encode() + str(v).encode()).hexdigest()[:12].upper()
                os.environ[name] = str(v)
                out[k] = ENV_PREFIX + name
            else:
                out[k] = move(v, where)
        return out

    return move(storage_options)


def open_fs(url: str, storage_options: dict | None = None) -> tuple[Any, str]:
    """``fsspec.core.url_to_fs`` with the timeouts of ``storage_options[IO_KEY]`` (defaults:
    StorageTimeouts()) applied to the S3 and GCS clients; "env:NAME" values read from the
    environment (resolve_options)."""
    options = resolve_options(dict(storage_options or {}))
    timeouts = StorageTimeouts(**options.pop(IO_KEY, {}))
    protocol = fsspec.utils.get_protocol(url)
    if protocol in _S3:
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("connect_timeout", timeouts.connect)
        config.setdefault("read_timeout", timeouts.read)
        config.setdefault("retries", {"max_attempts": 1, "mode": "standard"})  # s3fs's loop retries
        options["config_kwargs"] = config
    elif protocol in ("gs", "gcs"):
        options.setdefault("timeout", timeouts.connect + timeouts.read)
    fs, path = fsspec.core.url_to_fs(url, **options)
    if protocol in _S3 | {"gs", "gcs"} and hasattr(fs, "retries"):
        fs.retries = timeouts.retries
    return fs, path


class StorageUnavailableError(OSError):
    """Object storage did not answer (timed out, refused, unreachable) within the limits."""


@contextlib.contextmanager
def storage_errors(url: str, storage_options: dict | None) -> Iterator[None]:
    """Turn a storage client's timeout / connection failure into StorageUnavailableError,
    one line that names the endpoint and the limits."""
    timeouts = StorageTimeouts(**dict(storage_options or {}).get(IO_KEY, {}))
    try:
        yield
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - classified below, re-raised unchanged otherwise
        if not is_unavailable(exc):
            raise
        where = url.split("://", 1)[0] + "://" + url.split("://", 1)[-1].split("/", 1)[0] if "://" in url else url
        endpoint = (dict(storage_options or {}).get("client_kwargs") or {}).get("endpoint_url") or \
            (storage_options or {}).get("endpoint_url")
        raise StorageUnavailableError(
            f"storage {where}{f' at {endpoint}' if endpoint else ''} did not answer ({type(exc).__name__}) within"
            f" {timeouts.retries} tries of {timeouts.connect:g} s connect / {timeouts.read:g} s read"
            " (--io-timeout, --io-retries); nothing was lost: re-run to resume"
        ) from None


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (or its cause) says the store did not answer, rather than that a file is bad."""
    if isinstance(exc, StorageUnavailableError):
        return True
    names = {t.__name__ for t in type(exc).__mro__}
    unavailable = {"TimeoutError", "ConnectTimeoutError", "ReadTimeoutError", "EndpointConnectionError",
                   "ConnectionError", "ClientConnectorError", "ServerTimeoutError", "ClientOSError",
                   "ConnectionRefusedError", "ConnectionResetError", "ServerDisconnectedError"}
    return bool(names & unavailable) or (exc.__cause__ is not None and is_unavailable(exc.__cause__))


# Filesystems of this machine (a rename is a rename, a read waits on no network); on an
# object store every call is a round trip (10-30 ms on S3).
_LOCAL_PROTOCOLS = ("file", "local", "memory")


def is_local(url: str) -> bool:
    """Whether ``url`` is on a filesystem of this machine (a path, file://, memory://),
    not an object store whose every call is a round trip."""
    return fsspec.utils.get_protocol(url) in _LOCAL_PROTOCOLS


# Writes a local run's stage keeps in flight to an object store at once, whatever its
# workers: each is several requests (an upload, a copy and a delete for a move), each a
# round trip that waits on the store, not the CPU. With S3 at 20 ms a request (moto), a
# one-worker `fast` migrate of the pipeline benchmark wrote its 21 shards in 5.2 s one at a
# time; four at once took its run from 10.1-10.2 to 6.5-6.6 s, eight no further
# (migrate's shards, restore's files).
REMOTE_WRITE_THREADS = 4


# s3fs's makedirs asks whether the bucket exists on every call, and its mv lists the
# target (is it a folder?) before it copies and deletes: a shard's publish and commit on
# S3 made ~18 requests.


def makedirs_once(fs, folder: str, made: set[str]) -> None:
    """``fs.makedirs(folder, exist_ok=True)`` unless ``folder`` is in ``made`` (the
    caller's record of what it made), which it is after."""
    if folder not in made:
        fs.makedirs(folder, exist_ok=True)
        made.add(folder)


def move_file(fs, tmp: str, final: str) -> None:
    """Move the file ``tmp`` to ``final``: a rename where the filesystem has one, else a
    copy of the one object (it appears whole) and the temporary's deletion, as fsspec's
    mv does there, without its listing of ``final``."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if any(p in _LOCAL_PROTOCOLS for p in protocols):
        fs.mv(tmp, final)
    else:
        fs.cp_file(tmp, final)
        fs.rm_file(tmp)
