"""What a distributed runner receives: job graphs free of secrets and of anything that grows
with the archive."""

from __future__ import annotations

import uuid

import pytest
from conftest import pydicom_bytes

from pipelines.runner import run_migrate
from pipelines.storage import CredentialsError, resolve_options, worker_storage_options


def test_storage_credentials_never_enter_the_job_graph(tmp_path, monkeypatch, job_graphs):
    """Literal credentials in --storage-options are moved to the launcher's environment and
    referred to as env:NAME (local runners' workers inherit it); a remote runner is refused
    before anything starts; workers resolve env:NAME themselves."""
    secret = "s3cr3t-" + uuid.uuid4().hex
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    (src / "ct.dcm").write_bytes(pydicom_bytes("CT_small.dcm"))
    options = {"key": "AKIA" + uuid.uuid4().hex[:16].upper(), "secret": secret, "auto_mkdir": True}
    summary = run_migrate(str(src), str(dst), preset="fast", progress=False, phi_in_clear=True, storage_options=options)
    assert summary["archived"] == 1 and job_graphs
    for graph in job_graphs:
        assert str(dst).encode() in graph  # the configs are in what is searched
        assert secret.encode() not in graph and options["key"].encode() not in graph
        assert b"env:MEDARCHIVE_SO_" in graph

    with pytest.raises(CredentialsError, match="storage option key holds a secret"):
        run_migrate(str(src), str(tmp_path / "remote"), preset="fast", progress=False, phi_in_clear=True,
                    storage_options=options, runner="PortableRunner")
    assert not (tmp_path / "remote").exists()

    monkeypatch.setenv("MEDARCHIVE_TEST_SECRET", secret)
    nested = {"client_kwargs": {"aws_secret_access_key": "env:MEDARCHIVE_TEST_SECRET"}, "token": "anon"}
    assert worker_storage_options(nested, local=False) == nested  # references and modes are not secrets
    assert resolve_options(nested)["client_kwargs"]["aws_secret_access_key"] == secret
    monkeypatch.delenv("MEDARCHIVE_TEST_SECRET")
    with pytest.raises(CredentialsError, match="not set on this worker"):
        resolve_options(nested)


def test_progress_from_a_runners_metrics(tmp_path):
    """MetricsProgress reads the job's own Beam counters from a real runner's result (here the
    in-process FnApiRunner, whose counters are final when run() returns; remote runners
    answer the same query while they run)."""
    import io

    import apache_beam as beam

    from pipelines.archive import Archive
    from pipelines.migrate import Migrate, MigrateConfig
    from pipelines.progress import MetricsProgress

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        (src / name).write_bytes(pydicom_bytes(name))
    (src / "junk.dcm").write_bytes(b"junk" * 100)
    Archive(str(dst)).open_or_create(key=None, key_mode="keyring")
    cfg = MigrateConfig(src=str(src), dst=str(dst), run_id="20261204T000000Z-metrics1", preset="fast")
    pipeline = beam.Pipeline(runner="FnApiRunner")
    _ = pipeline | beam.Create([str(src)]) | Migrate(cfg, (), 0.0)
    result = pipeline.run()
    result.wait_until_finish()
    out = io.StringIO()
    with MetricsProgress(result, stream=out, interval=3600):
        pass
    [line] = out.getvalue().splitlines()
    assert line.startswith("progress: ") and " 3/3 instances," in line and "1 failed" in line and "(runner metrics" in line, line


def test_a_keyless_migrate_parses_each_input_once(tmp_path, monkeypatch):
    """The record and the index's identifiers come from one parse of the file (the codec's);
    pydicom is not asked to read the header a second time."""
    import pydicom

    import medcodec

    calls = []
    real = pydicom.dcmread

    def counting(*args, **kwargs):
        calls.append(kwargs.get("stop_before_pixels", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    src = tmp_path / "src"
    src.mkdir()
    names = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")
    for name in names:
        (src / name).write_bytes(pydicom_bytes(name))
    summary = run_migrate(str(src), str(tmp_path / "dst"), preset="fast", progress=False, phi_in_clear=True)
    assert summary["archived"] == 3
    assert len(calls) == 3, calls  # was 6: the codec's parse and a header read for the identifiers
    for name in names:
        data = pydicom_bytes(name)
        _, ids, _ = medcodec.Codec(preset="fast").archive_dicom(data)
        assert ids == medcodec.dicom_identifiers(data) and ids["sop"] and ids["modality"]
