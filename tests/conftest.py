"""Shared test settings, inputs (pydicom test files, keyrings) and job-graph helpers.

Helpers and parametrize lists take the pydicom test files through the functions here
(``from conftest import pydicom_bytes, pydicom_file, pydicom_files``); test bodies may
take them as the fixtures ``testdata`` and ``testdata_path``.
"""

import functools
import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Property tests run the real coder; keep example counts modest for the 2-core CI.
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Under pytest-xdist every worker is one of two processes on a 2-core machine: one torch
# thread each (and for the subprocesses tests start), or OpenMP spin-waits oversubscribe
# the cores. The transformer's bitstream does not depend on the thread count (tested).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


# The two sweeps over every real file in pydicom-data (the whole codec, and the keyed path)
# take most of the suite's time. `make test` runs them on this sample, which covers every
# restore mode and the common layouts (signed CT, big-endian MR, lossless JPEG / JPEG-LS /
# JPEG 2000 / RLE, RGB and YBR, multi-frame, odd sizes, 16 x 16 thumbnails, lossy sources
# kept verbatim, files without pixels or file meta); `make test-slow` (and CI) the rest.
SWEEP_TESTS = {"test_codec_roundtrip", "test_keyed_roundtrip_every_readable_file"}
SWEEP_SAMPLE = {
    "CT_small.dcm", "MR_small.dcm", "MR_small_bigendian.dcm", "JPEG-LL.dcm", "SC_rgb.dcm", "SC_rgb_rle.dcm",
    "color3d_jpeg_baseline.dcm", "emri_small.dcm", "rtplan.dcm", "ExplVR_LitEndNoMeta.dcm", "liver.dcm",
    "waveform_ecg.dcm", "SC_rgb_small_odd.dcm", "6154", "emri_small_jpeg_2k_lossless.dcm", "MR_small_RLE.dcm",
    "SC_rgb_16bit.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "examples_ybr_color.dcm", "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_expb_2frame.dcm", "RG1_J2KI.dcm", "nested_priv_SQ.dcm", "no_meta_group_length.dcm",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name, _, param = item.name.partition("[")
        if name in SWEEP_TESTS and param.rstrip("]") not in SWEEP_SAMPLE:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def jpegls_dicom():
    """Make a JPEG-LS lossless DICOM of an all-zero rows x cols image (a few hundred bytes
    of codestream); ``claim=(rows, cols)`` makes the header declare other dimensions."""
    from benchmarks.hardening_probes import jpegls_dicom

    return jpegls_dicom


def graph_plaintext(pipeline) -> bytes:
    """A Beam pipeline's job graph as a runner receives it, with every pickled payload
    opened (Beam stores DoFns and their configs bz2- or zlib-compressed and base64-encoded,
    so a plain search of the serialized graph finds nothing that is inside them)."""
    import base64
    import bz2
    import re
    import zlib

    raw = pipeline.to_runner_api().SerializeToString()
    opened = [raw]
    for run in re.findall(rb"[A-Za-z0-9+/]{32,}={0,2}", raw):
        try:
            blob = base64.b64decode(run, validate=True)
        except ValueError:
            continue
        for inflate in (bz2.decompress, zlib.decompress):
            try:
                opened.append(inflate(blob))
                break
            except (OSError, ValueError, zlib.error):
                continue
    return b"\n".join(opened)


@pytest.fixture
def job_graphs(monkeypatch):
    """Every job graph submitted in the test (graph_plaintext of each pipeline run)."""
    import apache_beam as beam

    graphs: list[bytes] = []
    run = beam.Pipeline.run

    def recording_run(self, *args, **kwargs):
        graphs.append(graph_plaintext(self))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(beam.Pipeline, "run", recording_run)
    return graphs


# --- shared inputs: pydicom test files and keyrings ------------------------------------------


@functools.cache
def pydicom_file(name: str) -> str:
    """The path of one pydicom test file (pydicom's own or pydicom-data's), looked up once."""
    from pydicom.data import get_testdata_file

    return get_testdata_file(name)


@functools.cache
def pydicom_bytes(name: str) -> bytes:
    """The bytes of one pydicom test file, read once per session."""
    return Path(pydicom_file(name)).read_bytes()


@functools.cache
def pydicom_files() -> tuple[str, ...]:
    """Every pydicom test file on this machine, sorted (listed once: the listing is slow)."""
    from pydicom.data import get_testdata_files

    return tuple(sorted(get_testdata_files()))


@pytest.fixture(scope="session")
def testdata():
    """name -> bytes of a pydicom test file."""
    return pydicom_bytes


@pytest.fixture(scope="session")
def testdata_path():
    """name -> path (a str, as pydicom gives it) of a pydicom test file."""
    return pydicom_file


@pytest.fixture(scope="module")
def keyring(tmp_path_factory):
    """One fresh keyring per test module."""
    from medcodec import crypto

    return crypto.Keyring.create(tmp_path_factory.mktemp("keys") / "ring.json")


@pytest.fixture
def fresh_keyring(tmp_path):
    """A fresh keyring of this test's own (its file: ``fresh_keyring.path``)."""
    from medcodec import crypto

    return crypto.Keyring.create(tmp_path / "ring.json")


def smooth_image(rows: int, cols: int, bits: int, seed: int = 0, noise: float = 3.0) -> np.ndarray:
    """A smooth wave over ``rows`` x ``cols`` with Gaussian noise, clipped to ``bits`` bits (float)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:rows, :cols]
    top = (1 << bits) - 1
    img = top / 2 + top / 3 * np.sin(x / 17.0) * np.cos(y / 23.0) + rng.normal(0, noise, (rows, cols))
    return np.clip(img, 0, top)


def zip_bytes(members: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of ``members`` (name -> bytes), in order."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    """A tar (``mode`` "w:gz": a tar.gz) of ``members`` (name -> bytes), in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()
