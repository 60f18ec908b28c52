"""A-LoRA benchmark: base model vs base + A-LoRA vs plain LoRA, per modality, on unseen images.

    python -m benchmarks.adapt [--steps 600] [--rank 4] [--groups CT,MR] [--eval-size 512]
                               [--bound] [--no-records] [--json OUT.json] [SOURCE ...]

Images: the benchmark's held-out pydicom-data groups (medcodec.model.train.HELD_OUT_GROUPS;
the base model never saw them), or any SOURCE folders. Each image is split in two: frames
of a multi-frame image (first half / rest), otherwise rows (top half / bottom half). The
first halves are the archive sample the adapters are fitted on (one adapter per modality
group); the second halves are never used for fitting and are what we code and report.

Every number is a real record: ``compress_pixels`` with the transformer local path (the
base model, A-LoRA, and plain LoRA fitted identically but without the anatomical prior),
decoded again and compared. Bits per sample count the whole record; the adapter's size is
reported amortized over 1,000 / 10,000 / 100,000 images of the modality's mean size.
The local (transformer) part of each record is reported too: it is all an adapter changes.

``--bound`` also measures the local path on patches of the evaluation halves (the integer
models' cross-entropy, which is what the coder pays per local symbol, without coding
records), for the base model, both adapters, and an A-LoRA adapter fitted on those very
patches: in-sample, it bounds what an adapter of this rank and step count can gain on them.
``--no-records`` skips the records (with ``--bound``: the patch table alone, minutes).

Time budget: each record is coded three times, each through ``max``'s global path and the
transformer, so ``--eval-size S`` codes the centre S x S crop of each evaluation half
(default 512; 0 codes it whole: the CR halves alone then take over 20 minutes on this
2-core machine), and ``--groups`` limits the modality groups.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

import numpy as np

from benchmarks import write_json

AMORTIZE = (1_000, 10_000, 100_000)


def split_image(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fit part, evaluation part) of a (frames, samples, rows, cols) array."""
    f = values.shape[0]
    if f >= 2:
        return values[: f // 2], values[f // 2 :]
    r = values.shape[2] // 2
    return values[:, :, :r], values[:, :, r:]


def centre_crop(values: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` crop of a (frames, samples, rows, cols) array (0: all)."""
    if size <= 0:
        return values
    rows, cols = values.shape[2:]
    r0, c0 = max(0, (rows - size) // 2), max(0, (cols - size) // 2)
    return values[:, :, r0 : r0 + size, c0 : c0 + size]


def _planes(values: np.ndarray, bits: int) -> list[tuple[np.ndarray, int]]:
    from medcodec.model.geometry import MAX_K
    from medcodec.planes import choose_k_transformer

    k, _ = choose_k_transformer(values[values.shape[0] // 2, 0].astype(np.int64), bits, max_k=MAX_K)
    return [(values[f, s].astype(np.int64), k) for f in range(values.shape[0]) for s in range(values.shape[1])]


def _code(values: np.ndarray, bits: int, coder, models) -> dict:
    import medcodec

    t0 = time.perf_counter()
    blob = medcodec.compress_pixels(values, bits_stored=bits, signed=False, local_model=coder)
    t1 = time.perf_counter()
    out = medcodec.decompress_pixels(blob, models=models)
    t2 = time.perf_counter()
    if not np.array_equal(out.reshape(values.shape), values):
        raise AssertionError("decoded pixels differ from the input")
    info = medcodec.inspect_record(blob)
    return {"bytes": len(blob), "local_bytes": info["sections"].get("local", 0), "encode_s": t1 - t0,
            "decode_s": t2 - t1}


def local_bound(base, fitted: dict, planes: list, *, steps: int, rank: int, seed: int, threads: int) -> dict:
    """Local bits per symbol (integer models) on patches of ``planes``: the base model, each
    fitted adapter, and an A-LoRA adapter fitted on those patches themselves ("in-sample")."""
    from medcodec.model.adapt import VALID_PATCHES, AdaptConfig, fine_tune, plane_samples
    from medcodec.model.train import Samples, integer_bits

    patches = plane_samples(planes, max(64, VALID_PATCHES // max(1, len(planes))), seed + 1)
    if not len(patches):
        return {}
    arrays = patches.arrays()
    out = {"patches": len(patches), "base": integer_bits(base.tensors, base.meta, arrays)}
    for label, model in fitted.items():
        out[label] = integer_bits(model.tensors, base.meta, arrays)
    own = fine_tune(base, patches, Samples(), AdaptConfig(rank=rank, steps=steps, prior=True, seed=seed,
                                                          threads=threads), log=lambda m: None)
    out["in-sample"] = integer_bits(own.model.tensors, base.meta, arrays)
    return out


def run(sources: list[str], *, steps: int, rank: int, seed: int, log, groups_wanted=None, eval_size: int = 0,
        bound: bool = False, records: bool = True) -> dict:
    import torch

    import medcodec
    from medcodec.model.adapt import TRAIN_PATCHES, AdaptConfig, fine_tune, plane_samples
    from medcodec.model.coder import TransformerLocalPathCoder
    from medcodec.model.images import iter_images
    from medcodec.model.registry import load_model
    from medcodec.model.train import Samples, held_out

    default = sources == ["pydicom"]
    images = [im for im in iter_images(sources, frame_cap=16) if not default or held_out(im.name)]
    groups: dict[str, list] = {}
    for im in images:
        group = medcodec.modality_group(im.modality)
        if groups_wanted is None or group in groups_wanted:
            groups.setdefault(group, []).append(im)
    if not groups:
        raise SystemExit(f"no images in the modality groups {', '.join(sorted(groups_wanted or ()))} "
                         f"of {', '.join(sources)}")
    base = load_model("llm-base-v1", device="cpu")
    store = medcodec.ModelStore()  # the adapters fitted here, handed to decoding
    threads = torch.get_num_threads()
    report = {"images": {g: [im.name for im in ims] for g, ims in groups.items()}, "steps": steps, "rank": rank,
              "seed": seed, "threads": threads, "eval_size": eval_size, "groups": {}}
    for group, ims in sorted(groups.items()):
        fit_planes = [p for im in ims for p in _planes(split_image(im.values)[0], im.bits)]
        train = plane_samples(fit_planes, max(64, TRAIN_PATCHES // len(fit_planes)), seed)
        coders = {"base": TransformerLocalPathCoder(base)}
        fits, fitted = {}, {}
        for label, prior in (("a-lora", True), ("lora", False)):
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            t0 = time.perf_counter()
            result = fine_tune(base, train, Samples(), AdaptConfig(rank=rank, steps=steps, prior=prior, seed=seed,
                                                                  threads=threads), log=lambda m: None)
            fits[label] = {"seconds": round(time.perf_counter() - t0, 1), "adapter_bytes": len(result.blob),
                           "peak_rss_mb": round(max(rss0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024, 1),
                           "train_bits": result.metrics.get("train_bits_adapted"),
                           "train_bits_base": result.metrics.get("train_bits_base")}
            store.add_adapter(result.blob)  # decoding gets it as restore gets an archive's models/
            coders[label] = TransformerLocalPathCoder(result.model)
            fitted[label] = result.model
            log(f"{group}: {label} fitted in {fits[label]['seconds']} s on {len(train)} patches")
        bound_bits = {}
        if bound:
            eval_planes = [p for im in ims for p in _planes(split_image(im.values)[1], im.bits)]
            bound_bits = local_bound(base, fitted, eval_planes, steps=steps, rank=rank, seed=seed, threads=threads)
            if bound_bits:
                log(f"{group}: local bits per symbol on {bound_bits['patches']} evaluation patches: " + "  ".join(
                    f"{lb} {bound_bits[lb]:.4f}" for lb in ("base", "a-lora", "lora", "in-sample")))
        rows = []
        for im in ims if records else ():
            ev = np.ascontiguousarray(centre_crop(split_image(im.values)[1], eval_size))
            row = {"image": im.name, "samples": int(ev.size)}
            for label, coder in coders.items():
                row[label] = _code(ev, im.bits, coder, store)
            rows.append(row)
            log(f"{group}: {im.name} " + "  ".join(f"{lb} {8 * row[lb]['bytes'] / row['samples']:.3f}"
                                                   for lb in coders))
        samples = sum(r["samples"] for r in rows)
        mean_image = statistics.mean(int(im.values.size) for im in ims)
        summary = {"samples": samples, "mean_image_samples": mean_image, "fits": fits, "images": rows,
                   "local_bound": bound_bits}
        report["groups"][group] = summary
        if not rows:
            continue
        for label in coders:
            summary[f"bpp_{label}"] = 8 * sum(r[label]["bytes"] for r in rows) / samples
            summary[f"local_bpp_{label}"] = 8 * sum(r[label]["local_bytes"] for r in rows) / samples
        for label in ("a-lora", "lora"):
            summary[f"gain_{label}"] = 1 - summary[f"bpp_{label}"] / summary["bpp_base"]
            summary[f"amortized_{label}"] = {
                str(n): summary[f"bpp_{label}"] + 8 * fits[label]["adapter_bytes"] / (n * mean_image) for n in AMORTIZE
            }
    return report


def format_report(report: dict) -> str:
    records = any(s["images"] for s in report["groups"].values())
    what = ("whole-record bits per sample on the evaluation halves"
            + (f" (centre {report['eval_size']} x {report['eval_size']} crops)" if report.get("eval_size") else "")
            if records else "no records coded (--no-records)")
    lines = [
        f"A-LoRA benchmark: rank {report['rank']}, {report['steps']} steps, seed {report['seed']}, "
        f"{report['threads']} thread(s); {what}",
    ]
    if records:
        lines.append(
            f"{'group':5} {'samples':>10} {'base':>7} {'A-LoRA':>7} {'LoRA':>7} {'A-LoRA gain':>11} {'LoRA gain':>9}"
            f"  {'local base/A/L':>20}  A-LoRA +adapter @1k/10k/100k   fit s (A/L)")
    for group, s in sorted(report["groups"].items()):
        if not s["images"]:
            continue
        am = s["amortized_a-lora"]
        lines.append(
            f"{group:5} {s['samples']:>10,} {s['bpp_base']:7.3f} {s['bpp_a-lora']:7.3f} {s['bpp_lora']:7.3f} "
            f"{100 * s['gain_a-lora']:10.1f}% {100 * s['gain_lora']:8.1f}%  "
            f"{s['local_bpp_base']:6.3f}/{s['local_bpp_a-lora']:6.3f}/{s['local_bpp_lora']:6.3f}  "
            f"{am['1000']:.4f}/{am['10000']:.4f}/{am['100000']:.4f}   "
            f"{s['fits']['a-lora']['seconds']:.0f}/{s['fits']['lora']['seconds']:.0f}"
        )
    for group, s in sorted(report["groups"].items()):
        b = s.get("local_bound")
        if b:
            lines.append(f"{group:5} local bits per symbol on {b['patches']:,} evaluation patches (integer models): "
                         f"base {b['base']:.4f}, " + ", ".join(
                             f"{lb} {b[lb]:.4f} ({100 * (1 - b[lb] / b['base']):.1f}% below)"
                             for lb in ("a-lora", "lora", "in-sample")))
        if not s["images"]:
            continue
        lb, la, ll = s["local_bpp_base"], s["local_bpp_a-lora"], s["local_bpp_lora"]
        if lb:
            lines.append(f"{group:5} local path alone: A-LoRA {100 * (1 - la / lb):.1f}% and LoRA "
                         f"{100 * (1 - ll / lb):.1f}% below base ({lb:.3f} bits per image sample)")
    adapter = next(iter(report["groups"].values()))["fits"]["a-lora"]["adapter_bytes"] if report["groups"] else 0
    lines.append(f"adapter size {adapter:,} B per modality; images: {report['images']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.adapt", description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="*", default=["pydicom"])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--groups", help="comma-separated modality groups to run (default: all), e.g. CT,MR")
    p.add_argument("--eval-size", type=int, default=512,
                   help="code the centre S x S crop of each evaluation half (0: whole; see the docstring)")
    p.add_argument("--bound", action="store_true",
                   help="also measure local bits on evaluation patches, with an adapter fitted on them (in-sample)")
    p.add_argument("--no-records", action="store_true", help="code no records (with --bound: the patch table only)")
    p.add_argument("--json", help="write the full report here")
    args = p.parse_args(argv)
    if args.eval_size < 0:
        p.error(f"--eval-size must be 0 (whole) or positive, not {args.eval_size}")
    if args.no_records and not args.bound:
        p.error("--no-records without --bound measures nothing")
    wanted = None if not args.groups else {g.strip().upper() for g in args.groups.split(",") if g.strip()}
    report = run(args.sources, steps=args.steps, rank=args.rank, seed=args.seed,
                 log=lambda m: print(m, file=sys.stderr, flush=True), groups_wanted=wanted, eval_size=args.eval_size,
                 bound=args.bound, records=not args.no_records)
    print(format_report(report))
    write_json(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
