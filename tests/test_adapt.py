"""A-LoRA: the anatomical prior, integer adapters, exactness, records, and the archive's models/."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import medcodec
from medcodec import container as ct
from medcodec.errors import ModelMismatchError
from medcodec.model import adapt, adapter
from medcodec.model.coder import TransformerLocalPathCoder
from medcodec.model.registry import WEIGHTS_DIR, load_model
from medcodec.model.train import float_bits, integer_bits
from medcodec.paths import PlaneInfo

from conftest import pydicom_bytes

REPO = Path(__file__).resolve().parents[1]


# --- the prior -------------------------------------------------------------------------------


def _body(rows=96, cols=128, seed=0):
    """A bright 'body' disc with a dark hole inside, on a dark noisy background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    disc = (y - rows / 2) ** 2 + (x - cols / 2) ** 2 < (rows / 3) ** 2
    hole = (y - rows / 2) ** 2 + (x - cols / 2) ** 2 < (rows / 12) ** 2
    img = np.where(disc & ~hole, 900 + 150 * np.sin(x / 5.0), 60) + rng.normal(0, 6, (rows, cols))
    return np.clip(img, 0, 4095).astype(np.int64), disc


def test_prior_marks_the_body_fills_its_holes_and_down_weights_background():
    img, disc = _body()
    w = adapt.anatomical_prior(img >> 2)
    assert w.shape == img.shape and w.dtype == np.float32
    assert np.all(w[~disc][:50] == pytest.approx(adapt.BACKGROUND_WEIGHT))
    inner = disc.copy()
    inner[: img.shape[0] // 2 - 20] = False  # away from the disc edge blocks
    centre = (img.shape[0] // 2, img.shape[1] // 2)
    assert w[centre] >= 1.0  # the hole is inside the body: filled
    assert (w[disc] >= 1.0).mean() > 0.9
    assert w.max() <= 2.0 and w[disc].max() > 1.2  # edge density raises the weight


def test_prior_of_a_constant_or_tiny_plane_is_uniform():
    assert np.all(adapt.anatomical_prior(np.full((20, 30), 7)) == 1.0)
    assert adapt.anatomical_prior(np.arange(6).reshape(2, 3)).shape == (2, 3)


def test_a_small_bright_speck_is_not_kept_as_anatomy():
    img, disc = _body()
    img[2:10, 2:10] = 1000  # an 8x8 label in the corner, much smaller than the body
    assert np.all(adapt.foreground_mask(img)[0, 0] == np.False_)


@pytest.mark.parametrize(("modality", "group"), [("CT", "CT"), ("dx", "CR"), ("RG", "CR"), (None, "OT"), ("US", "US")])
def test_modality_groups(modality, group):
    assert adapter.modality_group(modality) == group


# --- float copy, export, merge ----------------------------------------------------------------


def _pattern_plane(rows=64, cols=96, seed=1):
    """Smooth image whose two low bits follow a fixed pattern the base model has never seen."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    smooth = (1200 + 300 * np.sin(x / 11.0) * np.cos(y / 13.0) + rng.normal(0, 3, (rows, cols))).astype(np.int64)
    return (smooth & ~3) | ((x // 2 + y) % 4)


@pytest.fixture(scope="module")
def base():
    return load_model("llm-base-v1", device="cpu")


@pytest.fixture(scope="module")
def fitted(base):
    torch.set_num_threads(1)
    plane = _pattern_plane()
    train = adapt.plane_samples([(plane[:40], 2)], 600, 0)
    valid = adapt.plane_samples([(plane[40:], 2)], 200, 1)
    result = adapt.fine_tune(base, train, valid, adapt.AdaptConfig(steps=80, threads=1), log=lambda m: None)
    return result, train, valid, plane


def test_float_copy_of_the_integer_model_matches_it(base):
    valid = adapt.plane_samples([(_body()[0], 2)], 200, 3)
    arrays = valid.arrays()
    model = adapt.float_from_integer(base.tensors, base.meta)
    assert abs(float_bits(model, arrays) - integer_bits(base.tensors, base.meta, arrays)) < 0.01


def test_fine_tuning_learns_the_archive_and_exports_an_exact_adapter(fitted, base):
    result, _, _, _ = fitted
    m = result.metrics
    assert m["train_bits_adapted"] < m["train_bits_base"] - 0.1
    assert m["valid_bits_adapted"] < m["valid_bits_base"] - 0.1
    assert abs(m["valid_bits_adapted"] - m["valid_bits_adapted_float"]) < 0.05  # integer export stays close
    tensors, meta = adapter.read_adapter(result.blob)
    assert meta["base_model"] == "llm-base-v1" and meta["base_sha256"] == base.sha256
    assert all(int(t.abs().max()) <= adapt.A_LEVELS for n, t in tensors.items() if n.endswith(".lora_a"))
    # merging is integer arithmetic: the same tensors every time, and only projections change
    merged = adapter.merge_adapter(base.tensors, tensors)
    again = adapter.merge_adapter(base.tensors, tensors)
    assert all(torch.equal(merged[n], again[n]) for n in merged)
    changed = {n for n in merged if not torch.equal(merged[n], base.tensors[n])}
    assert changed and all(n.rsplit(".", 2)[-2] in adapt.LORA_TARGETS.values() for n in changed)
    assert result.model.adapter_sha256 == hashlib.sha256(result.blob).hexdigest() == result.sha256


def test_adapter_refuses_another_base_and_other_files(fitted):
    result = fitted[0]
    fast = load_model("llm-fast-v1", device="cpu")
    with pytest.raises(ModelMismatchError, match="fitted to"):
        adapter.apply_adapter(fast, result.blob)
    with pytest.raises(ModelMismatchError, match="not an A-LoRA adapter"):
        adapter.read_adapter((WEIGHTS_DIR / "llm-base-v1.safetensors").read_bytes())
    with pytest.raises(ModelMismatchError):
        medcodec.ModelStore([b"garbage"])


def test_adapted_stream_is_independent_of_batch_size(fitted):
    result, _, _, plane = fitted
    k = 2
    info = PlaneInfo(rows=plane.shape[0], cols=plane.shape[1], bits=12 - k, k=k, preset="max")
    g, loc = plane >> k, plane & 3
    streams = {b: TransformerLocalPathCoder(result.model, batch_patches=b).encode(loc, g, info) for b in (1, 7, 4096)}
    assert len(set(streams.values())) == 1
    assert np.array_equal(TransformerLocalPathCoder(result.model, batch_patches=5).decode(streams[1], g, info), loc)
    base_stream = TransformerLocalPathCoder(load_model("llm-base-v1", device="cpu")).encode(loc, g, info)
    assert len(streams[1]) < len(base_stream)  # the adapter has learned the pattern


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_adapted_model_on_cuda_gives_the_cpu_bitstream(fitted):
    result, _, _, plane = fitted
    k = 2
    info = PlaneInfo(rows=plane.shape[0], cols=plane.shape[1], bits=12 - k, k=k, preset="max")
    g, loc = plane >> k, plane & 3
    cpu = TransformerLocalPathCoder(result.model).encode(loc, g, info)
    gpu = TransformerLocalPathCoder(adapter.apply_adapter(load_model("llm-base-v1", device="cuda"), result.blob,
                                                        device="cuda"))
    assert gpu.encode(loc, g, info) == cpu
    assert np.array_equal(gpu.decode(cpu, g, info), loc)


# --- records ------------------------------------------------------------------------------------


_SUBPROCESS = textwrap.dedent(
    """
    import sys, numpy as np, torch
    torch.set_num_threads(int(sys.argv[1]))
    import medcodec
    store = medcodec.ModelStore([open(sys.argv[3], "rb").read()])
    img = np.load(sys.argv[4])
    if sys.argv[2] == "encode":
        coder = store.adapted(store.adapters[0])
        blob = medcodec.compress_pixels(img, bits_stored=12, signed=False, local_model=coder)
        open(sys.argv[5], "wb").write(blob)
    else:
        out = medcodec.decompress_pixels(open(sys.argv[5], "rb").read(), models=store)
        assert np.array_equal(out, img)
        print("decoded-ok")
    """
)


@pytest.mark.slow
def test_adapted_records_same_bytes_with_1_or_2_threads_and_decode_in_another_process(fitted, tmp_path):
    result, _, _, plane = fitted
    script, adapter, image = tmp_path / "code.py", tmp_path / "adapter.safetensors", tmp_path / "img.npy"
    script.write_text(_SUBPROCESS)
    adapter.write_bytes(result.blob)
    np.save(image, plane.astype(np.uint16))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    blobs = []
    for threads in (1, 2):
        out = tmp_path / f"rec{threads}"
        subprocess.run([sys.executable, str(script), str(threads), "encode", str(adapter), str(image), str(out)],
                       check=True, env=env)
        blobs.append(out.read_bytes())
    assert blobs[0] == blobs[1]
    config = ct.read_record(blobs[0]).config["pixels"]
    assert config["local_adapter_sha256"] == result.sha256 and config["local_model"] == "llm-base-v1"
    res = subprocess.run([sys.executable, str(script), "1", "decode", str(adapter), str(image), str(tmp_path / "rec1")],
                         check=True, env=env, capture_output=True, text=True)
    assert "decoded-ok" in res.stdout


def test_decoding_takes_the_adapter_from_the_model_store_it_is_given(fitted):
    """No process-global registration: a store that holds the adapter decodes the record,
    one that does not (or none) says where the adapter lives, and using a store leaves
    nothing behind for the next decode."""
    result, _, _, plane = fitted
    coder = TransformerLocalPathCoder(result.model)
    blob = medcodec.compress_pixels(plane.astype(np.uint16), bits_stored=12, signed=False, local_model=coder)
    assert medcodec.inspect_record(blob)["models"]["adapter_sha256"] == result.sha256
    holder = medcodec.ModelStore([result.blob])
    for store in (None, medcodec.ModelStore()):
        with pytest.raises(ModelMismatchError, match="models/"):
            medcodec.decompress_pixels(blob, models=store)
    assert np.array_equal(medcodec.decompress_pixels(blob, models=holder), plane)
    assert np.array_equal(medcodec.Codec(models=holder).decompress_pixels(blob), plane)
    with pytest.raises(ModelMismatchError, match="models/"):
        medcodec.decompress_pixels(blob)


# --- archive: migrate --adapt, models/, audit, restore ----------------------------------------


@pytest.mark.slow
def test_migrate_adapt_stores_adapters_and_audit_and_restore_use_them(tmp_path):
    import json
    from collections import Counter

    from pipelines.archive import Archive
    from pipelines.audit import read_audit_rows, run_audit
    from pipelines.restore import run_restore

    src, dst = tmp_path / "src", tmp_path / "archive"
    src.mkdir()
    originals = {}
    for name in ("MR_small.dcm", "emri_small.dcm", "CT_small.dcm"):
        data = pydicom_bytes(name)
        (src / name).write_bytes(data)
        originals[name] = data
    res = subprocess.run(
        # --local-model llm-base-v1: the adapted transformer only (by default the v1.0 path may win on
        # these tiny images, and this test is about records that need the adapter).
        [sys.executable, "-m", "jobs.cli", "migrate", str(src), str(dst), "--adapt", "3", "--min-images", "2",
         "--steps", "40", "--threads", "1", "--no-progress", "--local-model", "llm-base-v1", "--phi-in-clear"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((dst / "models" / "adapters.json").read_text())
    assert set(manifest["adapters"]) == {"MR"} and "CT" in manifest["fallback"]
    mr = manifest["adapters"]["MR"]
    assert (dst / "models" / f"{mr['sha256']}.safetensors").is_file()
    assert {"valid_bits_base", "valid_bits_adapted", "train_bits_base_prior_weighted"} <= set(mr["metrics"])
    assert "MR" in res.stderr and "adapter" in res.stderr
    rows = Archive(str(dst)).read_index().to_pylist()
    by_modality = Counter((r["modality"], r["adapter_sha256"]) for r in rows)
    assert by_modality[("CT", None)] == 1
    for r in rows:
        if r["modality"] == "MR":  # base + the MR adapter; CT (no adapter) uses the base alone
            assert (r["model_id"], r["model_hash"] is not None, r["adapter_sha256"]) == (
                "llm-base-v1", True, mr["sha256"])
    assert sum(r["adapter_sha256"] == mr["sha256"] for r in rows) == 2

    # deep audit decodes with the archive's adapter; every model is checked
    summary = run_audit(str(dst), deep=True)
    assert summary["failures"] == 0, summary
    audit = read_audit_rows(str(dst), summary["audit_id"])
    model_rows = [r for r in audit if r["check"] == "model"]
    assert model_rows and all(r["status"] == "ok" for r in model_rows)
    assert any(mr["sha256"][:16] in r["detail"] for r in model_rows)

    out = tmp_path / "restored"
    run_restore(str(dst), str(out))
    restored = Counter(hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file())
    assert restored == Counter(hashlib.sha256(b).hexdigest() for b in originals.values())

    # a damaged adapter: the audit names it, and decoding refuses the records that need it
    path = dst / "models" / f"{mr['sha256']}.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1
    path.write_bytes(bytes(blob))
    summary = run_audit(str(dst))
    assert summary["failures_by_check"].get("model") == 1
    assert any("does not match" in f["detail"] for f in summary["first_failures"])
    path.unlink()
    summary = run_audit(str(dst))
    assert summary["failures_by_check"].get("model") == 1
    assert any("missing" in f["detail"] for f in summary["first_failures"])


@pytest.mark.parametrize("args", [["--min-images", "1"], ["--rank", "0"], ["--sample", "0"]])
def test_adapt_rejects_bad_options_with_one_line(tmp_path, args):
    res = subprocess.run([sys.executable, "-m", "jobs.cli", "adapt", str(tmp_path / "none"), str(tmp_path / "out"),
                          *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode != 0 and "Traceback" not in res.stderr and "error:" in res.stderr


def test_adapt_rejects_a_source_without_images_with_one_line(tmp_path):
    empty = subprocess.run([sys.executable, "-m", "jobs.cli", "adapt", str(tmp_path), str(tmp_path / "out")],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert empty.returncode != 0 and "no pixel-coded DICOM images" in empty.stderr and "Traceback" not in empty.stderr
