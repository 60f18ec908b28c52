"""Fitting A-LoRA adapters of the local-path transformer to an archive (`medarchive adapt SRC OUT`).

Samples N inputs of SRC (any fsspec URL; the same listing and reader as migrate; a
deterministic hash order, so a re-run picks the same inputs), groups them by modality
(CT, MR, CR/DX, US, ...) and fits one adapter per group that has at least
``--min-images`` images; other modalities keep the base model. About a fifth of each
group's images (at least one) are held back for validation. Adapters are written
content-addressed to OUT/models/<sha256>.safetensors, and OUT/models/adapters.json
records which adapter codes which modality, with train / validation bits per symbol
(base and adapted, unweighted and prior-weighted), time and memory.

`medarchive migrate --adapt N` runs the same first and codes the job with the result.
This module reads sources and writes the archive; the fitting itself is the codec's
training code (medcodec.fit_adapters), loaded only here.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time

MIN_IMAGES = 4
MANIFEST = "models/adapters.json"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sample_inputs(src: str, n: int, storage_options: dict | None, log) -> list[dict]:
    """Up to ``n`` pixel-coded images of SRC in hash order: {"group", "planes": [(plane, k)], "k", "shape"}."""
    import medcodec

    from .sources import list_sources, read_source

    refs = [r for r in list_sources(src, storage_options=storage_options) if not isinstance(r, tuple)]
    refs.sort(key=lambda r: hashlib.sha256(f"{r.url}\0{r.member or ''}".encode()).hexdigest())
    images = []
    for ref in refs:
        if len(images) >= n:
            break
        try:
            data = read_source(ref, storage_options=storage_options)
        except Exception:  # noqa: BLE001 - migrate dead-letters what cannot be read; adapt skips it
            continue
        image = medcodec.fitting_image(data)
        if image is not None:
            images.append({"group": medcodec.modality_group(medcodec.dicom_identifiers(data).get("modality")), **image})
    log(f"sampled {len(images)} image(s) of {len(refs)} input(s)")
    return images


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

    import medcodec

    from .archive import Archive

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    started = time.perf_counter()
    images = sample_inputs(src, sample, storage_options, log)
    if not images:
        raise ValueError(f"no pixel-coded DICOM images found under {src}: nothing to adapt to")
    fitted = medcodec.fit_adapters(images, rank=rank, steps=steps, prior=prior, seed=seed,
                                   threads=threads or os.cpu_count() or 1, min_images=min_images, log=log)
    archive = Archive(out, storage_options=storage_options)
    adapters = {}
    for group, result in fitted["adapters"].items():
        sha = archive.write_model(result["blob"])
        adapters[group] = {"sha256": sha, "bytes": len(result["blob"]), "metrics": result["metrics"]}
    manifest = {
        "base_model": fitted["base_model"],
        "base_sha256": fitted["base_sha256"],
        "adapters": adapters,
        "fallback": fitted["fallback"],
        "config": {**fitted["config"], "sample": sample, "min_images": min_images},
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
    from .archive import Archive

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
