"""Key files for pipelines: where the identity (keyed-hash) key comes from."""

from __future__ import annotations


def identity_key_from(key_file: str | None) -> bytes:
    """The keyring's identifier key (stable across KEK rotation)."""
    if not key_file:
        raise ValueError("this archive uses a key file; pass --key-file")
    from medcodec.crypto import Keyring

    return Keyring.load(key_file).uid_key()


def load_keyring(key_file: str | None):
    """The keyring at ``key_file``, or None when no key file is given (loaded once per worker)."""
    if not key_file:
        return None
    from medcodec.crypto import Keyring

    return Keyring.load(key_file)
