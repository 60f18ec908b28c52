"""Schemas of what medarchive stores: the container format (FORMAT.md) and its version constants.

The constants are defined once, in medcodec.container (medcodec imports nothing from
other top-level packages), and re-exported here for pipelines and audits.
"""

from medcodec.container import (
    FLAG_CRITICAL,
    FORMAT_MAJOR,
    FORMAT_MINOR,
    MAGIC,
    SECTION_CONFIG,
    SECTION_GLOBAL,
    SECTION_HEADER,
    SECTION_LOCAL,
    SECTION_NAMES,
    SECTION_OUTSIDE,
    SECTION_VERBATIM,
)

FORMAT_VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"

__all__ = [
    "FLAG_CRITICAL",
    "FORMAT_MAJOR",
    "FORMAT_MINOR",
    "FORMAT_VERSION",
    "MAGIC",
    "SECTION_CONFIG",
    "SECTION_GLOBAL",
    "SECTION_HEADER",
    "SECTION_LOCAL",
    "SECTION_NAMES",
    "SECTION_OUTSIDE",
    "SECTION_VERBATIM",
]
