"""Schemas of what medarchive stores: the record format (FORMAT.md) and the archive's tables (tables.py).

A leaf: this package imports no other medarchive package. The record format's constants
(magic, version, section types) are defined once, by the code that writes them, in
medcodec.container; FORMAT.md specifies them, and ``medcodec.FORMAT_MAJOR`` /
``medcodec.FORMAT_MINOR`` are the version everything else reads.
"""
