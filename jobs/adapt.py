"""`medarchive adapt SRC OUT`: fit A-LoRA adapters of the local-path transformer to an archive.

Samples N inputs of SRC (any fsspec URL; the same listing and reader as migrate; a
deterministic hash order, so a re-run picks the same inputs), groups them by modality
(CT, MR, CR/DX, US, ...) and fits one adapter per group that has at least
``--min-images`` images; other modalities keep the base model. About a fifth of each
group's images (at least one) are held back for validation. Adapters are written
content-addressed to OUT/models/<sha256>.safetensors, and OUT/models/adapters.json
records which adapter codes which modality, with train / validation bits per symbol
(base and adapted, unweighted and prior-weighted), time and memory.

`medarchive migrate --adapt N` runs the same first and codes the job with the result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import time
from dataclasses import asdict

import numpy as np

BASE_MODEL = "llm-base-v1"
MIN_IMAGES = 4
VALID_FRACTION = 5  # every 5th image of a modality (at least one) validates
FRAME_CAP = 2  # planes per image: at most this many frames (all samples)
MANIFEST = "models/adapters.json"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sample_inputs(src: str, n: int, storage_options: dict | None, log) -> list[dict]:
    """Up to ``n`` pixel-coded images of SRC in hash order: {"group", "planes": [(plane, k)]}."""
    from medcodec.dicom import DicomLimits, parse_dicom
    from medcodec.codec import coding_values
    from medcodec.model.geometry import MAX_K
    from medcodec.planes import SampleFormat, choose_k_transformer
    from medcodec.model.adapt import modality_group
    from pipelines.migrate import header_identifiers
    from pipelines.sources import list_sources, read_source

    refs = [r for r in list_sources(src, storage_options=storage_options) if not isinstance(r, tuple)]
    refs.sort(key=lambda r: hashlib.sha256(f"{r.url}\0{r.member or ''}".encode()).hexdigest())
    images = []
    for ref in refs:
        if len(images) >= n:
            break
        try:
            data = read_source(ref, storage_options=storage_options)
            parsed = parse_dicom(data, limits=DicomLimits())
        except Exception:  # noqa: BLE001 - migrate dead-letters what cannot be read; adapt skips it
            continue
        if parsed.spec is None or parsed.frames is None or parsed.restore_mode == "verbatim":
            continue
        values, _, bits, _ = coding_values(parsed.frames, SampleFormat.of(parsed.spec))
        n_frames = values.shape[0]
        k, _ = choose_k_transformer(values[n_frames // 2, 0], bits, max_k=MAX_K)
        frames = sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, min(FRAME_CAP, n_frames))})
        planes = [(values[f, s], k) for f in frames for s in range(values.shape[1])]
        images.append({"group": modality_group(header_identifiers(data).get("modality")), "planes": planes,
                       "k": k, "shape": list(values.shape)})
    log(f"sampled {len(images)} image(s) of {len(refs)} input(s)")
    return images


def adapt_images(images: list[dict], config, *, min_images: int, log) -> tuple[dict, dict]:
    """One adapter per modality group with enough images -> ({group: AdaptResult}, {group: reason})."""
    from medcodec.model.adapt import TRAIN_PATCHES, VALID_PATCHES, fine_tune, plane_samples
    from medcodec.model.registry import load_model

    base = load_model(BASE_MODEL, device="cpu")
    by_group: dict[str, list[dict]] = {}
    for image in images:
        by_group.setdefault(image["group"], []).append(image)
    results, fallback = {}, {}
    for group, members in sorted(by_group.items()):
        usable = [m for m in members if m["k"] > 0]
        if len(usable) < min_images:
            fallback[group] = f"{len(usable)} usable image(s) < --min-images {min_images}: base model"
            log(f"{group}: {fallback[group]}")
            continue
        n_valid = max(1, len(usable) // VALID_FRACTION)
        valid_imgs, train_imgs = usable[:n_valid], usable[n_valid:]
        train_planes = [p for m in train_imgs for p in m["planes"]]
        valid_planes = [p for m in valid_imgs for p in m["planes"]]
        train = plane_samples(train_planes, max(64, TRAIN_PATCHES // len(train_planes)), config.seed)
        valid = plane_samples(valid_planes, max(64, VALID_PATCHES // len(valid_planes)), config.seed + 1)
        log(f"{group}: fitting on {len(train_imgs)} image(s) ({len(train)} patches), "
            f"validating on {len(valid_imgs)} ({len(valid)} patches)")
        result = fine_tune(base, train, valid, config, extra_meta={"modality": group},
                           log=lambda m, g=group: log(f"{g}: {m}"))
        result.metrics.update({"train_images": len(train_imgs), "valid_images": len(valid_imgs)})
        results[group] = result
        m = result.metrics
        log(f"{group}: valid bits/symbol base {m['valid_bits_base']:.4f} -> adapted {m['valid_bits_adapted']:.4f} "
            f"({m['fit_seconds']:.0f} s)")
    return results, fallback


def run_adapt(
    src: str,
    out: str,
    *,
    sample: int = 64,
    rank: int = 4,
    steps: int = 600,
    prior: bool = True,
    min_images: int = MIN_IMAGES,
    seed: int = 0,
    threads: int | None = None,
    storage_options: dict | None = None,
    argv: list[str] | None = None,
    log=None,
) -> dict:
    """Fit, store the adapters under OUT/models/ and write OUT/models/adapters.json; returns it."""
    import os

    # Options first: a typo is reported before torch and transformers load (seconds).
    if sample < 1:
        raise ValueError(f"--sample must be >= 1, got {sample}")
    if min_images < 2:
        raise ValueError(f"--min-images must be >= 2 (one image validates), got {min_images}")
    if not 1 <= rank <= 64 or steps < 1:
        raise ValueError(f"--rank must be 1..64 and --steps >= 1, got rank {rank}, steps {steps}")

    from medcodec.model.adapt import AdaptConfig
    from medcodec.model.registry import load_model
    from pipelines.archive import Archive

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    started = time.perf_counter()
    config = AdaptConfig(rank=rank, steps=steps, prior=prior, seed=seed, threads=threads or os.cpu_count() or 1)
    images = sample_inputs(src, sample, storage_options, log)
    if not images:
        raise ValueError(f"no pixel-coded DICOM images found under {src}: nothing to adapt to")
    results, fallback = adapt_images(images, config, min_images=min_images, log=log)
    archive = Archive(out, storage_options=storage_options)
    base = load_model(BASE_MODEL, device="cpu")
    adapters = {}
    for group, result in results.items():
        sha = archive.write_model(result.blob)
        adapters[group] = {"sha256": sha, "bytes": len(result.blob), "metrics": result.metrics}
    manifest = {
        "base_model": BASE_MODEL,
        "base_sha256": base.sha256,
        "adapters": adapters,
        "fallback": fallback,
        "config": {**asdict(config), "sample": sample, "min_images": min_images},
        "images": {g: sum(1 for i in images if i["group"] == g) for g in sorted({i["group"] for i in images})},
        "command": "medarchive adapt " + " ".join(argv or []),
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    archive.write_atomic(MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return manifest


def read_manifest(out: str, storage_options: dict | None = None) -> dict | None:
    """OUT/models/adapters.json, or None when OUT has none."""
    from pipelines.archive import Archive

    archive = Archive(out, storage_options=storage_options)
    try:
        with archive.fs.open(archive.path(MANIFEST), "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None


def adapter_map(manifest: dict | None) -> dict[str, str]:
    """{modality group: adapter SHA-256} of a manifest."""
    return {g: a["sha256"] for g, a in ((manifest or {}).get("adapters") or {}).items()}


def format_manifest(manifest: dict) -> str:
    lines = [f"A-LoRA on {manifest['base_model']} ({manifest['base_sha256'][:12]}...): "
             f"{sum(manifest['images'].values())} image(s) sampled {manifest['images']}"]
    for group, a in sorted(manifest["adapters"].items()):
        m = a["metrics"]
        lines.append(
            f"  {group:4} adapter {a['sha256'][:16]}... {a['bytes']:,} B  valid bits/symbol base "
            f"{m['valid_bits_base']:.4f} -> {m['valid_bits_adapted']:.4f} "
            f"({100 * (m['valid_bits_adapted'] / m['valid_bits_base'] - 1):+.1f}%), prior-weighted "
            f"{m['valid_bits_base_prior_weighted']:.4f} -> {m['valid_bits_adapted_prior_weighted']:.4f}; "
            f"train {m['train_bits_base']:.4f} -> {m['train_bits_adapted']:.4f}; "
            f"{m['train_images']}+{m['valid_images']} images, {m['fit_seconds']:.0f} s"
        )
    for group, why in sorted(manifest["fallback"].items()):
        lines.append(f"  {group:4} {why}")
    lines.append(f"  {manifest['seconds']:.0f} s, peak memory {manifest['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def add_arguments(p, *, with_sample: bool = True) -> None:
    if with_sample:
        p.add_argument("--sample", type=int, default=64, metavar="N", help="inputs to sample (default 64)")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank (default 4)")
    p.add_argument("--steps", type=int, default=600, help="fine-tuning steps per modality (default 600)")
    p.add_argument("--min-images", type=int, default=MIN_IMAGES,
                   help=f"images a modality needs for its own adapter (default {MIN_IMAGES})")
    p.add_argument("--no-prior", action="store_true", help="plain LoRA: no anatomical prior weighting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")


def run_from_args(args: argparse.Namespace, src: str, out: str, sample: int, argv: list[str],
                  storage_options: dict | None = None) -> dict:
    return run_adapt(src, out, sample=sample, rank=args.rank, steps=args.steps, prior=not args.no_prior,
                     min_images=args.min_images, seed=args.seed, threads=args.threads,
                     storage_options=storage_options, argv=argv)
