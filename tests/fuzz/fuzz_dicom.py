"""Fuzz the DICOM reader: ``parse_dicom`` through ``compress_dicom`` (plain and keyed).

    .venv/bin/python tests/fuzz/fuzz_dicom.py -max_total_time=600     # a campaign
    .venv/bin/python tests/fuzz/fuzz_dicom.py -atheris_runs=200000 CORPUS_DIR
    .venv/bin/python tests/fuzz/fuzz_dicom.py CRASH_FILE               # replay one input

Seeds: a small, varied set of pydicom's test files (_common.DICOM_SEED_FILES). Every input
goes to ``is_dicom`` (must never raise) and ``compress_dicom(preset="fast")`` under a 256 MiB
memory budget, which parses, codes and decodes it again (verify); one input in four is also
compressed with a keyring (de-identification, sealing, embedding). A CorruptRecordError
from compress_dicom is a finding too: the record it just wrote does not decode back.
See _common.py for what a finding is.
"""

import sys
import warnings
import zlib

from _common import LIMITS, Finding, check_error, medcodec, report, run  # first: instruments medcodec
from _mutators import DicomMutator
from _seeds import dicom_seeds, keyring

RING = keyring()


def test_one_input(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            medcodec.dicom.is_dicom(data)
        except BaseException as exc:  # noqa: BLE001 - a sniff must never raise
            try:
                raise Finding(f"is_dicom raised {type(exc).__name__}") from exc
            except Finding as finding:
                report(finding, data)
        keyed = zlib.crc32(data) % 4 == 0
        for ring in (None, RING) if keyed else (None,):
            what = "compress_dicom" + (" (keyed)" if ring else "")
            try:
                medcodec.compress_dicom(data, preset="fast", limits=LIMITS, keyring=ring)
            except medcodec.CorruptRecordError as exc:
                try:
                    raise Finding(f"{what}: the record just written does not decode back ({exc})") from exc
                except Finding as finding:
                    report(finding, data)
            except BaseException as exc:  # noqa: BLE001 - judged by check_error
                try:
                    check_error(exc, data, what)
                except Finding as finding:
                    report(finding, data)


if __name__ == "__main__":
    run("dicom", test_one_input, dicom_seeds(), custom_mutator=DicomMutator(), argv=sys.argv)
