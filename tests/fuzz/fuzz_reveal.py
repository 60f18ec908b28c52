"""Fuzz ``medcodec.sealing.reveal``: reading the PHI message out of a de-identified (stego)
DICOM file with the keyring.

    .venv/bin/python tests/fuzz/fuzz_reveal.py -max_total_time=600    # a campaign
    .venv/bin/python tests/fuzz/fuzz_reveal.py -atheris_runs=200000 CORPUS_DIR
    .venv/bin/python tests/fuzz/fuzz_reveal.py CRASH_FILE              # replay one input

Seeds: the stego files of the golden keyed records (stego versions 1-3, full and essential
tiers) and of keyed records written at start from small pydicom files (golden test
keyring). The mutator is the DICOM one, plus low-bit flips inside PixelData (tampering
with carrying pixels). See _common.py for what a finding is.
"""

import sys
import warnings

from _common import call, medcodec, run  # first: instruments medcodec
from _mutators import DicomMutator
from _seeds import golden_records, keyring, made_records, stego_files

RING = keyring()


def test_one_input(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        call("reveal", medcodec.sealing.reveal, data, RING)


def seeds() -> dict[str, bytes]:
    return stego_files({**golden_records(), **made_records(RING)})


if __name__ == "__main__":
    run("reveal", test_one_input, seeds(), custom_mutator=DicomMutator(pixel_bits=True), argv=sys.argv)
