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


def open_fs(url: str, storage_options: dict | None = None) -> tuple[Any, str]:
    """``fsspec.core.url_to_fs`` with the timeouts of ``storage_options[IO_KEY]`` (defaults:
    StorageTimeouts()) applied to the S3 and GCS clients."""
    options = dict(storage_options or {})
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
