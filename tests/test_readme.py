"""The README's Python snippets run as written (item 10 of issue 21: a snippet that raised
AttributeError went unnoticed)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from conftest import pydicom_bytes

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_python_snippet_in_the_readme_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    rng = np.random.default_rng(0)
    for block in blocks:
        # The names a snippet uses without defining: an image and a DICOM file.
        namespace = {"array": rng.integers(0, 4096, size=(32, 48), dtype=np.uint16),
                     "dicom_bytes": pydicom_bytes("CT_small.dcm")}
        original = dict(namespace)
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - as written
        if "decompress_pixels" in block:
            assert np.array_equal(namespace["array"], original["array"])
        if "decompress_dicom" in block:
            assert namespace["dicom_bytes"] == original["dicom_bytes"]
    # Prose snippets in backticks that are Python calls on the package.
    import medcodec

    for call in re.findall(r"`(medcodec\.[a-z_.]+)\(\)`", README.read_text()):
        obj = medcodec
        for part in call.split(".")[1:]:
            obj = getattr(obj, part)
        assert callable(obj), call
