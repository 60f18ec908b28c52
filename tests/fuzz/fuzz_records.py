"""Fuzz the record decoder: read_record, inspect_record, decompress_pixels, decompress_dicom
(with the key for keyed records) and rewrap_record.

    .venv/bin/python tests/fuzz/fuzz_records.py -max_total_time=600   # a campaign
    .venv/bin/python tests/fuzz/fuzz_records.py -atheris_runs=200000 CORPUS_DIR
    .venv/bin/python tests/fuzz/fuzz_records.py CRASH_FILE             # replay one input

Seeds: the golden records (tests/fixtures/golden) and records written at start from small
pydicom files, plain and keyed (the golden test keyring). The custom mutator
(_mutators.RecordMutator) edits config values, section payloads (also inside their lzma
streams, and sealed sections re-sealed with the key) and the section list *under* valid
CRC32Cs and SHA-256 trailer, and sometimes the raw bytes. Readers run under a 256 MiB
memory budget. See _common.py for what a finding is.
"""

import sys
import warnings

from _common import LIMITS, call, medcodec, run  # first: instruments medcodec
from _mutators import RecordMutator
from _seeds import golden_records, keyring, made_records

RING = keyring()


def test_one_input(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = call("read_record", medcodec.container.read_record, data)
        call("inspect_record", medcodec.inspect_record, data)
        config = record.config if record is not None and isinstance(record.config, dict) else {}
        sealed = bool(config.get("sealed"))
        if config.get("kind") == "pixels" or record is None:
            call("decompress_pixels", medcodec.decompress_pixels, data, limits=LIMITS)
        if config.get("kind") != "pixels":
            call("decompress_dicom", medcodec.decompress_dicom, data, limits=LIMITS, keyring=RING if sealed else None)
        if sealed or record is None:
            call("rewrap_record", medcodec.sealing.rewrap_record, data, RING)


def seeds() -> dict[str, bytes]:
    return {**golden_records(), **made_records(RING)}


def load_models(records: dict[str, bytes]) -> None:
    """Decode the records that name a transformer once, so torch and its weights are loaded
    before the address space is capped and the first such input is not slow."""
    for blob in records.values():
        if medcodec.inspect_record(blob).get("models", {}).get("local", "").startswith("llm-"):
            medcodec.decompress_pixels(blob)


if __name__ == "__main__":
    all_seeds = seeds()
    load_models(all_seeds)
    run("records", test_one_input, all_seeds, custom_mutator=RecordMutator(all_seeds, RING), argv=sys.argv)
