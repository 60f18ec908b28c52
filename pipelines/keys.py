"""Key files for pipelines: where the identity (keyed-hash) key comes from.

``key_file`` is a key source's spec (medcodec.key_source): a local path, an fsspec
URL (``s3://secrets/ring.json``) or ``env:NAME``. Jobs pass the spec to their workers;
each worker reads the keyring itself, so no key material enters a job graph."""

from __future__ import annotations


def identity_key_from(key_file: str | None) -> bytes:
    """The keyring's identifier key (stable across KEK rotation)."""
    if not key_file:
        raise ValueError("this archive uses a key file; pass --key-file")
    from medcodec import Keyring, key_source

    return Keyring.from_source(key_source(key_file)).uid_key()


def load_keyring(key_file: str | None):
    """The keyring at ``key_file``, or None when no key file is given (loaded once per worker)."""
    if not key_file:
        return None
    from medcodec import Keyring, key_source

    return Keyring.from_source(key_source(key_file))
