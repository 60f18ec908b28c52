"""Arrow / Parquet schemas of the archive's tables: index, dead-letter and audit rows.

Versioned: a schema's version is stored in the Parquet metadata (b"medarchive.schema")
and in archive.json. No field holds PHI in clear: identifiers needed for lookup
(patient / study / series / SOP UIDs, source paths) are keyed hashes (HMAC-SHA256,
hex), see pipelines.identity.
"""

from __future__ import annotations

import pyarrow as pa

INDEX_SCHEMA_VERSION = "3"  # 2: adapter_sha256; 3: row_mac (older index files read with them null)
DEADLETTER_SCHEMA_VERSION = "1"
AUDIT_SCHEMA_VERSION = "1"

INDEX_SCHEMA = pa.schema(
    [
        pa.field("sop_key", pa.string(), nullable=False),  # keyed hash of SOPInstanceUID
        pa.field("series_key", pa.string(), nullable=False),
        pa.field("study_key", pa.string(), nullable=False),
        pa.field("patient_key", pa.string(), nullable=False),
        pa.field("source_key", pa.string(), nullable=False),  # keyed hash of the source path (+ archive member)
        pa.field("source_sha256", pa.string(), nullable=False),
        pa.field("original_size", pa.int64(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),  # shards/<stem>.<run>.<sha16>.tar (older: shards/<stem>.tar), relative to the archive root
        pa.field("offset", pa.int64(), nullable=False),  # byte offset of the record inside the shard
        pa.field("length", pa.int64(), nullable=False),
        pa.field("record_sha256", pa.string(), nullable=False),
        pa.field("modality", pa.string()),
        pa.field("rows", pa.int32()),
        pa.field("cols", pa.int32()),
        pa.field("frames", pa.int32()),
        pa.field("samples", pa.int32()),
        pa.field("bits_allocated", pa.int32()),
        pa.field("bits_stored", pa.int32()),
        pa.field("transfer_syntax", pa.string()),
        pa.field("restore_mode", pa.string(), nullable=False),
        pa.field("pixel_sha256", pa.string()),  # digest of the stored words (null for verbatim)
        pa.field("k", pa.int32()),
        pa.field("bpp_global", pa.float64()),
        pa.field("bpp_local", pa.float64()),
        pa.field("bpp_record", pa.float64()),
        pa.field("preset", pa.string()),
        pa.field("codec_id", pa.string()),
        pa.field("model_id", pa.string()),  # local-path model id
        pa.field("model_hash", pa.string()),  # SHA-256 of the model's weights, null for classical models
        pa.field("adapter_sha256", pa.string()),  # A-LoRA adapter (archive models/<sha>.safetensors), or null
        pa.field("key_id", pa.string()),  # key that sealed the record, null if none
        pa.field("format_version", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("encode_seconds", pa.float64()),
        pa.field("read_seconds", pa.float64()),
        # HMAC-SHA256 (archive identity key) binding the record to its place and identity:
        # INDEX_MAC_FIELDS below; checked by audit and restore (pipelines.archive.Identity.row_mac)
        pa.field("row_mac", pa.string()),
    ],
    metadata={b"medarchive.schema": b"index/" + INDEX_SCHEMA_VERSION.encode()},
)

DEADLETTER_SCHEMA = pa.schema(
    [
        pa.field("source_key", pa.string(), nullable=False),
        pa.field("source_hint", pa.string()),  # file extension / archive member kind only, never the name
        pa.field("source_sha256", pa.string()),
        pa.field("size", pa.int64()),
        pa.field("stage", pa.string(), nullable=False),  # list | read | parse | encode | write
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
    ],
    metadata={b"medarchive.schema": b"deadletter/" + DEADLETTER_SCHEMA_VERSION.encode()},
)

INDEX_MAC_FIELDS = ("record_sha256", "shard", "offset", "length", "sop_key", "series_key", "study_key", "patient_key",
                    "source_key", "source_sha256")

AUDIT_SCHEMA = pa.schema(
    [
        pa.field("shard", pa.string(), nullable=False),
        pa.field("sop_key", pa.string()),
        pa.field("check", pa.string(), nullable=False),  # record | pixels | file | missing | extra | model
        pa.field("status", pa.string(), nullable=False),  # ok | fail
        pa.field("detail", pa.string()),
        pa.field("audit_id", pa.string(), nullable=False),
    ],
    metadata={b"medarchive.schema": b"audit/" + AUDIT_SCHEMA_VERSION.encode()},
)


def table_of(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) -> a table of exactly this schema (missing optional fields are null)."""
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)
