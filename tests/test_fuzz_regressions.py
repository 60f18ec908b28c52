"""Regression tests for what the fuzz harnesses (tests/fuzz/) found, one construction each.

Every failure a user can cause is a MedcodecError with one line that quotes no record
content, header value or key material; see tests/test_fuzz.py for the harnesses' pass.
"""

import io
import struct

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import medcodec


# --------------------------------------------------------------------------------------
# fuzz_dicom: the fast preset's plane chooser (wavefront._follows) took the extremes of an
# empty sample when a plane has one pixel: ValueError for a 1 x 1 image with two frames or
# three samples (compress_dicom of a DICOM file claiming that, compress_pixels).


@pytest.mark.parametrize("shape", [(2, 1, 1), (1, 1, 1, 3), (2, 1, 1, 3)])
def test_one_pixel_planes_code_with_fast(shape):
    array = (np.arange(int(np.prod(shape)), dtype=np.uint8) * 37).reshape(shape)
    blob = medcodec.compress_pixels(array, bits_stored=8, signed=False, preset="fast")
    assert np.array_equal(medcodec.decompress_pixels(blob), array)


def test_one_pixel_two_frame_dicom_compresses():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.Rows = ds.Columns = 1
    ds.NumberOfFrames = 2
    ds.PixelData = struct.pack("<hh", 7, -3)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    blob = medcodec.compress_dicom(buf.getvalue(), preset="fast")
    assert medcodec.decompress_dicom(blob) == buf.getvalue()
