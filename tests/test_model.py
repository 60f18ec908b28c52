"""The transformer local path: exact integer arithmetic, exact inference, shipped weights."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import medcodec
from medcodec import container as ct
from medcodec.codec import PRESET_LOCAL_MODELS, SCREEN_MIN_SAMPLES, SMALL_IMAGE_LOCAL_MODELS
from medcodec.errors import CorruptRecordError, ModelMismatchError
from medcodec.models import BASE_TRANSFORMER
from medcodec.model import geometry, intnet
from medcodec.model.coder import TransformerLocalPathCoder
from medcodec.model.registry import WEIGHTS_DIR, load_model, model_from_bytes, pack, unpack
from medcodec.paths import PlaneInfo

from conftest import pydicom_file

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["llm-base-v1", "llm-fast-v1"]


def _f(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


# --- exact integer helpers ----------------------------------------------------------------


@given(st.integers(-(1 << 50), 1 << 50), st.integers(1, 1 << 30))
def test_floor_div_is_exact(n, d):
    assert int(intnet.floor_div(_f([n]), _f([d]))[0]) == n // d


@given(st.integers(1, 1 << 40), st.integers(20, 40))
def test_reciprocal_is_exact(d, shift):
    assert int(intnet.reciprocal(_f([d]), shift)[0]) == (1 << shift) // d


@given(st.integers(0, (1 << 52) - 1))
def test_isqrt_is_exact(x):
    r = int(intnet.isqrt(_f([x]))[0])
    assert r * r <= x < (r + 1) * (r + 1)


@given(st.integers(-(1 << 50), 1 << 50), st.integers(1, 30))
def test_rshift_round_is_round_half_even(x, shift):
    got = int(intnet.rshift_round(_f([x]), shift)[0])
    q, r = divmod(x, 1 << shift)
    half = 1 << (shift - 1)
    want = q + (r > half or (r == half and q % 2 == 1))
    assert got == want


# --- the shipped models ---------------------------------------------------------------------


@pytest.mark.parametrize("model_id", SHIPPED)
def test_shipped_weights_match_their_manifest(model_id):
    blob = (WEIGHTS_DIR / f"{model_id}.safetensors").read_bytes()
    manifest = json.loads((WEIGHTS_DIR / f"{model_id}.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(blob).hexdigest()
    assert len(blob) <= 10 * 1024 * 1024
    assert manifest["command"].startswith("medarchive train-base")
    # Held-out benchmark images were never trained on.
    from medcodec.model.train import HELD_OUT_GROUPS

    files = manifest["data"]["files"]
    assert {f["group"] for f in files if f["split"] == "train"}.isdisjoint(HELD_OUT_GROUPS)
    assert any(f["split"] == "held-out" for f in files)
    assert manifest["metrics"]["valid_bits_integer"] < manifest["metrics"]["valid_bits_uniform"]


def _inputs(model, n: int, seed: int):
    rng = np.random.default_rng(seed)
    prompt = torch.from_numpy(rng.integers(-15, 16, (n, geometry.PATCH_TOKENS, geometry.N_PROMPT)))
    causal = torch.from_numpy(rng.integers(0, geometry.N_BINS + 1, (n, geometry.PATCH_TOKENS, geometry.N_CAUSAL)))
    valid = torch.from_numpy(rng.random((n, geometry.PATCH_TOKENS)) < 0.9)
    return model.net.embed(prompt, causal, int(rng.integers(1, 7))), valid


@pytest.mark.parametrize("model_id", SHIPPED)
def test_cached_steps_equal_the_full_pass_at_any_batch_size_and_patch_order(model_id):
    model = load_model(model_id, device="cpu")
    h, valid = _inputs(model, 37, 0)
    full = model.net.counts(h, valid)
    assert full.dtype == torch.int64 and int(full.min()) >= 1
    cache: list = []
    steps = [model.net.counts(h[:, t : t + 1], valid, start=t, cache=cache) for t in range(geometry.PATCH_TOKENS)]
    assert torch.equal(torch.cat(steps, dim=1), full)
    for size in (1, 5, 16):
        parts = [model.net.counts(h[i : i + size], valid[i : i + size]) for i in range(0, 37, size)]
        assert torch.equal(torch.cat(parts), full)
    perm = torch.randperm(37, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.net.counts(h[perm], valid[perm]), full[perm])


@pytest.mark.parametrize("model_id", SHIPPED)
def test_the_compiled_full_pass_gives_the_torch_models_counts(model_id):
    """intkernel.CompiledCounts (the CPU encoder's pass, and the decoder's cached steps)
    against IntegerTransformer.counts, for every k, summed to every symbol count the coder
    asks for, with tokens outside the plane, extreme prompts (all +-15, all zero) and
    neighbours all unknown."""
    from medcodec.model.coder import _grouped
    from medcodec.model.intkernel import CompiledCounts

    model = load_model(model_id, device="cpu")
    compiled = CompiledCounts(model.net)
    rng = np.random.default_rng(7)
    n = 96
    prompt = rng.integers(-15, 16, (n, geometry.PATCH_TOKENS, geometry.N_PROMPT)).astype(np.int8)
    prompt[:8], prompt[8:16], prompt[16:24] = 15, -15, 0
    causal = rng.integers(0, geometry.N_BINS + 1, (n, geometry.PATCH_TOKENS, geometry.N_CAUSAL))
    causal[24:32] = geometry.UNKNOWN
    valid = rng.random((n, geometry.PATCH_TOKENS)) < 0.8
    valid[:40] = True
    for k in range(1, geometry.MAX_K + 1):
        with torch.inference_mode():
            h = model.net.embed(torch.from_numpy(prompt), torch.from_numpy(causal), k)
            full = model.net.counts(h, torch.from_numpy(valid))
        assert np.array_equal(compiled.counts(prompt, causal, k, valid), full.numpy())
        for symbols_k in {1, k}:
            assert np.array_equal(compiled.counts(prompt, causal, k, valid, 1 << symbols_k), _grouped(full, symbols_k))
        cache = compiled.new_cache(n, geometry.PATCH_TOKENS)
        steps = [compiled.step(prompt[:, t], causal[:, t], k, valid, t, cache, 1 << k)
                 for t in range(geometry.PATCH_TOKENS)]
        assert np.array_equal(np.stack(steps, axis=1), _grouped(full, k))
    with pytest.raises(ValueError):
        compiled.counts(prompt, causal, 3, valid, 3)
    with pytest.raises(ValueError):
        compiled.step(prompt[:, 0], causal[:, 0], 3, valid, geometry.PATCH_TOKENS, cache)
    # the kernels index without bounds checks: inputs outside the tables are refused ...
    with pytest.raises(ValueError, match="out of range"):
        compiled.counts(prompt, causal + geometry.N_BINS, 3, valid)
    with pytest.raises(ValueError, match="out of range"):
        compiled.counts(prompt, causal, geometry.MAX_K + 1, valid)
    # ... and so is a model whose tables do not have its shape
    import copy

    short = copy.copy(model.net)
    short.silu = model.net.silu[:-1]
    with pytest.raises(ModelMismatchError, match="silu"):
        CompiledCounts(short)


def _plane(rows=37, cols=45, bits=12, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    smooth = 800 + 400 * np.sin(x / 7.0) * np.cos(y / 9.0)
    return np.clip(smooth + rng.normal(0, 12, (rows, cols)), 0, (1 << bits) - 1).astype(np.int64)


@pytest.mark.parametrize("model_id", SHIPPED)
def test_local_stream_is_independent_of_batch_size(model_id):
    v = _plane()
    k = 3
    info = PlaneInfo(rows=v.shape[0], cols=v.shape[1], bits=12 - k, k=k, preset="max")
    g, loc = v >> k, v & ((1 << k) - 1)
    model = load_model(model_id, device="cpu")
    streams = {b: TransformerLocalPathCoder(model, batch_patches=b).encode(loc, g, info) for b in (1, 7, 4096)}
    assert len(set(streams.values())) == 1
    for b in (3, 4096):
        assert np.array_equal(TransformerLocalPathCoder(model, batch_patches=b).decode(streams[1], g, info), loc)


_SUBPROCESS = textwrap.dedent(
    """
    import sys, hashlib, numpy as np, torch
    torch.set_num_threads(int(sys.argv[1]))
    import medcodec
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:70, 0:90]
    img = np.clip(2000 + 600 * np.sin(x / 9.0) + rng.normal(0, 20, (70, 90)), 0, 4095).astype(np.uint16)
    if sys.argv[2] == "encode":
        blob = medcodec.compress_pixels(img, bits_stored=12, signed=False, local_model="llm-base-v1")
        open(sys.argv[3], "wb").write(blob)
    else:
        out = medcodec.decompress_pixels(open(sys.argv[3], "rb").read())
        assert np.array_equal(out, img)
        print("decoded-ok")
    """
)


def test_same_bytes_with_1_or_2_threads_and_decoding_in_another_process(tmp_path):
    script = tmp_path / "code.py"
    script.write_text(_SUBPROCESS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    blobs = []
    for threads in (1, 2):
        out = tmp_path / f"rec{threads}"
        subprocess.run([sys.executable, str(script), str(threads), "encode", str(out)], check=True, env=env)
        blobs.append(out.read_bytes())
    assert blobs[0] == blobs[1]
    config = ct.read_record(blobs[0]).config["pixels"]
    assert config["local_model"] == "llm-base-v1" and config["k"] > 0
    res = subprocess.run(
        [sys.executable, str(script), "2", "decode", str(tmp_path / "rec1")], check=True, env=env,
        capture_output=True, text=True,
    )
    assert "decoded-ok" in res.stdout


def test_model_threads_reach_torch_only_when_the_transformer_path_loads_it():
    # numpy's BLAS gets the count at once (its own threads would spin beside the other
    # worker's). A `fast` worker sets its thread count and never codes with a transformer: torch
    # (about a second and 180 MB per process) stays unloaded; max's path then gets it.
    code = textwrap.dedent(
        """
        import sys, numpy as np, medcodec
        from threadpoolctl import threadpool_info
        medcodec.set_model_threads(1)
        assert {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"} == {1}
        img = (np.arange(48 * 40).reshape(48, 40) % 700).astype(np.uint16)
        blob = medcodec.compress_pixels(img, bits_stored=12, signed=False, preset="fast")
        assert np.array_equal(medcodec.decompress_pixels(blob), img)
        assert "torch" not in sys.modules, "a fast round trip loaded torch"
        from medcodec.model.registry import load_model
        import torch
        assert torch.get_num_threads() == 1
        medcodec.set_model_threads(2)  # torch is loaded now: applied at once
        assert torch.get_num_threads() == 2
        assert {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"} == {2}
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("model_id", SHIPPED)
def test_cuda_gives_the_cpu_bitstream(model_id):
    v = _plane(rows=64, cols=80)
    k = 3
    info = PlaneInfo(rows=64, cols=80, bits=12 - k, k=k, preset="max")
    g, loc = v >> k, v & ((1 << k) - 1)
    cpu = TransformerLocalPathCoder(load_model(model_id, device="cpu")).encode(loc, g, info)
    gpu_coder = TransformerLocalPathCoder(load_model(model_id, device="cuda"))
    assert gpu_coder.encode(loc, g, info) == cpu
    assert np.array_equal(gpu_coder.decode(cpu, g, info), loc)


# --- records ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", SHIPPED)
@pytest.mark.parametrize(
    "case",
    ["noisy12", "signed16", "u8", "rgb", "frames", "odd", "tiny"],
)
def test_transformer_records_round_trip(model_id, case):
    rng = np.random.default_rng(3)
    if case == "noisy12":
        arr, bits, signed = _plane(61, 67).astype(np.uint16), 12, False
    elif case == "signed16":
        arr, bits, signed = (_plane(40, 50, 16) * 8 - 20000 + rng.integers(-60, 60, (40, 50))).astype(np.int16), 16, True
    elif case == "u8":
        arr, bits, signed = np.clip(_plane(33, 41, 8) // 8 + rng.integers(-6, 6, (33, 41)), 0, 255).astype(np.uint8), 8, False
    elif case == "rgb":
        arr, bits, signed = rng.integers(0, 256, (1, 20, 30, 3)).astype(np.uint8), 8, False
    elif case == "frames":
        arr, bits, signed = np.stack([_plane(24, 40, 12, s) for s in range(3)]).astype(np.uint16), 12, False
    elif case == "odd":
        arr, bits, signed = _plane(5, 13).astype(np.uint16), 12, False
    else:
        arr, bits, signed = np.array([[4000]], dtype=np.uint16), 12, False
    blob = medcodec.compress_pixels(arr, bits_stored=bits, signed=signed, local_model=model_id)
    out = medcodec.decompress_pixels(blob)
    assert out.dtype == arr.dtype and np.array_equal(out, arr)
    pixels = ct.read_record(blob).config["pixels"]
    assert pixels["local_model"] == model_id
    assert pixels["local_model_sha256"] == load_model(pixels["local_model"]).sha256


def _retarget(blob: bytes, **changes) -> bytes:
    record = ct.read_record(blob)
    pixels = {**record.config["pixels"], **changes}
    for key in [k for k, v in changes.items() if v is None]:
        del pixels[key]
    return ct.write_record(ct.Record(config={**record.config, "pixels": pixels}, sections=record.sections))


def test_max_keeps_the_smallest_of_the_transformer_classical_and_fast_records():
    img = _plane(48, 64).astype(np.uint16)
    sizes = {m: len(medcodec.compress_pixels(img, bits_stored=12, signed=False, local_model=m))
             for m in PRESET_LOCAL_MODELS["max"]}
    sizes["fast"] = len(fast := medcodec.compress_pixels(img, bits_stored=12, signed=False, preset="fast"))
    # Named explicitly, every candidate is tried, whatever the image's size.
    both = medcodec.compress_pixels(img, bits_stored=12, signed=False, local_model=list(PRESET_LOCAL_MODELS["max"]))
    assert len(both) == min(v for m, v in sizes.items() if m != "fast")
    # The preset codes an image too small to screen without the transformer
    # (SMALL_IMAGE_LOCAL_MODELS): the smaller of the classical and fast records.
    assert img.size < SCREEN_MIN_SAMPLES and BASE_TRANSFORMER not in SMALL_IMAGE_LOCAL_MODELS["max"]
    timings: dict = {}
    medcodec.compress_pixels(img, bits_stored=12, signed=False, local_model=BASE_TRANSFORMER, timings=timings)
    assert timings["local_tokens"] == img.size  # tried, the transformer codes every pixel's low bits
    timings = {}
    blob = medcodec.compress_pixels(img, bits_stored=12, signed=False, preset="max", timings=timings)
    assert "local_tokens" not in timings
    kept = {m: v for m, v in sizes.items() if m in (*SMALL_IMAGE_LOCAL_MODELS["max"], "fast")}
    assert len(blob) == min(kept.values())
    pixels = ct.read_record(blob).config["pixels"]
    if min(kept, key=kept.get) == "fast":  # the compiled coder won: max keeps fast's record
        assert blob == fast and pixels["preset"] == "fast"
    else:
        assert pixels["local_model"] == min(kept, key=kept.get)


@pytest.mark.slow
def test_max_screens_its_local_models_on_a_crop_of_a_large_image():
    import pydicom

    from medcodec.codec import SCREEN_CROP, SCREEN_MIN_SAMPLES, screen_local_models
    from medcodec.paths import ClassicalLocalPathCoder
    from medcodec.planes import SampleFormat

    img = pydicom.dcmread(pydicom_file("OBXXXX1A.dcm")).pixel_array  # 600 x 800 ultrasound
    assert img.size >= SCREEN_MIN_SAMPLES
    words = img[None, None].astype(np.uint8)
    fmt = SampleFormat(bits_allocated=8, bits_stored=8, high_bit=7, signed=False)
    base, classical = TransformerLocalPathCoder(load_model("llm-base-v1")), ClassicalLocalPathCoder()
    # The transformer loses on the crop: it never codes the whole image.
    assert screen_local_models(words, fmt, "max", [base, classical]) == [classical]
    # Two equal candidates are both within the margin of the best (SCREEN_MARGIN, 0).
    twin = ClassicalLocalPathCoder()
    assert screen_local_models(words, fmt, "max", [classical, twin]) == [classical, twin]
    timings: dict = {}
    blob = medcodec.compress_pixels(img, bits_stored=8, signed=False, preset="max", timings=timings)
    assert blob == medcodec.compress_pixels(img, bits_stored=8, signed=False, local_model="classical-v1")
    assert timings["local_tokens"] == SCREEN_CROP * SCREEN_CROP  # the transformer coded the crop only


def test_decoding_refuses_a_different_or_missing_model():
    blob = medcodec.compress_pixels(_plane().astype(np.uint16), bits_stored=12, signed=False, local_model="llm-base-v1")
    with pytest.raises(ModelMismatchError, match="sha256"):
        medcodec.decompress_pixels(_retarget(blob, local_model_sha256="0" * 64))
    with pytest.raises(ModelMismatchError, match="llm-base-v0"):
        medcodec.decompress_pixels(_retarget(blob, local_model="llm-base-v0"))
    with pytest.raises(CorruptRecordError, match="SHA-256"):
        medcodec.decompress_pixels(_retarget(blob, local_model_sha256=None))


def test_export_keeps_the_float_model_close_and_packing_round_trips():
    from medcodec.model.floatnet import FloatLocalModel, export_integer

    torch.manual_seed(0)
    model = FloatLocalModel(intnet.ModelShape(hidden=16, layers=1, heads=2, ffn=32)).eval()
    tensors, meta = export_integer(model)
    back, meta2 = unpack(pack(tensors, meta))
    assert meta2 == meta and all(torch.equal(back[n].long(), tensors[n]) for n in tensors)
    loaded = model_from_bytes("llm-test", pack(tensors, meta), "cpu")
    h, valid = _inputs(loaded, 8, 2)
    rng = np.random.default_rng(2)
    prompt = torch.from_numpy(rng.integers(-15, 16, (8, geometry.PATCH_TOKENS, geometry.N_PROMPT)))
    causal = torch.from_numpy(rng.integers(0, geometry.N_BINS + 1, (8, geometry.PATCH_TOKENS, geometry.N_CAUSAL)))
    with torch.no_grad():
        p_float = torch.softmax(model(prompt, causal, torch.full((8,), 3)), -1)
    counts = loaded.net.counts(loaded.net.embed(prompt, causal, 3), torch.ones(8, geometry.PATCH_TOKENS, dtype=torch.bool))
    p_int = counts / counts.sum(-1, keepdim=True)
    assert float((p_float - p_int).abs().max()) < 0.01


def test_train_base_job_writes_a_loadable_model(tmp_path):
    from jobs import train_base

    planes = [(_plane(64, 96, 12, s), 12) for s in range(3)]
    result = train_base.train_one("llm-fast-v1", 6, 0, planes[:2], planes[2:], lambda m: None)
    manifest = train_base.write_model(tmp_path, "llm-fast-v1", result, [], ["--steps", "6"], 0)
    blob = (tmp_path / "llm-fast-v1.safetensors").read_bytes()
    assert manifest["sha256"] == hashlib.sha256(blob).hexdigest()
    loaded = model_from_bytes("llm-fast-v1", blob, "cpu")
    v = _plane(20, 24, 12, 9)
    info = PlaneInfo(rows=20, cols=24, bits=9, k=3, preset="fast")
    coder = TransformerLocalPathCoder(loaded)
    stream = coder.encode(v & 7, v >> 3, info)
    assert np.array_equal(coder.decode(stream, v >> 3, info), v & 7)
