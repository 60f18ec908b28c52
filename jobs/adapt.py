"""`medarchive adapt` and `migrate --adapt`: command-line options (the work is pipelines/adapt.py)."""

from __future__ import annotations

import argparse

from pipelines.adapt import MIN_IMAGES, run_adapt


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
