"""`medarchive train-base`: train the local-path transformers on shipped public images.

Data: the imaging DICOM files of the ``pydicom-data`` package (CT, MR, CR, US, OT;
duplicates in other transfer syntaxes removed, at most 2 frames per file), minus the
held-out groups of :data:`medcodec.model.train.HELD_OUT_GROUPS`, which the benchmark
reports on separately. Augmentation: mirror images and transposes, and every split k
the coder may choose around each plane's noise floor.

Writes ``<id>.safetensors`` (the exported integer model) and ``<id>.json`` (data files,
command, seed, metrics and the SHA-256 of the weights) into ``--out``, by default the
package's shipped weights directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import numpy as np

# The shipped models: id -> (shape, training steps). The id changes whenever the
# weights change (a record names id + SHA-256; old records need the old file).
MODELS = {
    "llm-base-v1": ({"hidden": 32, "layers": 2, "heads": 2, "ffn": 64}, 6000),
    "llm-fast-v1": ({"hidden": 16, "layers": 1, "heads": 2, "ffn": 32}, 4000),
}
PRESET_MODELS = {"max": "llm-base-v1", "fast": "llm-fast-v1"}
SAMPLES_PER_PLANE = 4000
VALID_PER_PLANE = 1000
FRAME_CAP = 2


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_planes(sources: list[str], log) -> tuple[list, list, list[dict]]:
    """(train planes, held-out planes, file records) from the image reader the benchmarks share."""
    from medcodec.model.images import iter_images
    from medcodec.model.train import held_out, image_group

    train, valid, files = [], [], []
    for image in iter_images(sources, frame_cap=FRAME_CAP):
        side = valid if held_out(image.name) else train
        for f in range(image.frames):
            for s in range(image.samples):
                side.append((image.values[f, s], image.bits))
        files.append(
            {
                "file": image.name,
                "group": image_group(image.name),
                "split": "held-out" if side is valid else "train",
                "modality": image.modality,
                "shape": list(image.values.shape),
                "bits": image.bits,
                "pixels_sha256": hashlib.sha256(image.values.tobytes()).hexdigest(),
            }
        )
    log(f"{sum(f['split'] == 'train' for f in files)} training images, {sum(f['split'] != 'train' for f in files)} held out")
    return train, valid, files


def train_one(model_id: str, steps: int | None, seed: int, train, valid, log) -> dict:
    from medcodec.model.intnet import ModelShape
    from medcodec.model.train import TrainConfig, collect, train_base

    shape_args, default_steps = MODELS[model_id]
    config = TrainConfig(shape=ModelShape(**shape_args), steps=steps or default_steps, seed=seed)
    train_s = collect(train, SAMPLES_PER_PLANE, seed)
    valid_s = collect(valid, VALID_PER_PLANE, seed + 1)
    log(f"{model_id}: {train_s.arrays()[0].shape[0]} training patches, {valid_s.arrays()[0].shape[0]} held-out patches")
    result = train_base(config, train_s, valid_s, log=lambda m: log(f"{model_id}: {m}"))
    result["config"] = config
    return result


def write_model(out_dir: Path, model_id: str, result: dict, files: list[dict], argv: list[str], seed: int) -> dict:
    from medcodec.model.registry import pack

    blob = pack(result["tensors"], result["meta"])
    sha = hashlib.sha256(blob).hexdigest()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{model_id}.safetensors").write_bytes(blob)
    config = result["config"]
    manifest = {
        "model_id": model_id,
        "sha256": sha,
        "bytes": len(blob),
        "shape": asdict(config.shape),
        "steps": config.steps,
        "batch_patches": config.batch,
        "learning_rate": config.lr,
        "seed": seed,
        "command": "medarchive train-base " + " ".join(argv),
        "metrics": result["metrics"],
        "data": {
            "package": f"pydicom-data {_package_version('pydicom-data')}",
            "frames_per_file": FRAME_CAP,
            "samples_per_plane": SAMPLES_PER_PLANE,
            "augmentation": "identity, left-right mirror, up-down mirror, transpose; k = noise-floor planes -1..+2",
            "files": files,
        },
        "software": {
            "python": platform.python_version(),
            "torch": _package_version("torch"),
            "transformers": _package_version("transformers"),
            "numpy": np.__version__,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / f"{model_id}.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=("max", "fast", "all"), default="all", help="which model(s) to train")
    p.add_argument("--steps", type=int, help="training steps (default: per model, see MODELS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output directory (default: the package's shipped weights)")
    p.add_argument("--source", action="append", help="image directories (default: pydicom-data)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="medarchive train-base", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv), argv)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from medcodec.model.registry import WEIGHTS_DIR

    args.out = args.out or WEIGHTS_DIR

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    ids = list(MODELS) if args.preset == "all" else [PRESET_MODELS[args.preset]]
    train, valid, files = load_planes(args.source or ["pydicom"], log)
    if not train or not valid:
        print(f"error: need training and held-out images; found {len(train)} training and {len(valid)} held-out "
              f"plane(s) in {args.source or ['pydicom']}", file=sys.stderr)
        return 2
    for model_id in ids:
        result = train_one(model_id, args.steps, args.seed, train, valid, log)
        manifest = write_model(args.out, model_id, result, files, argv, args.seed)
        m = manifest["metrics"]
        print(
            f"{model_id}: {manifest['bytes']} bytes, sha256 {manifest['sha256']}; held-out bits/symbol "
            f"float {m['valid_bits_float']:.4f}, integer {m['valid_bits_integer']:.4f}, "
            f"uniform {m['valid_bits_uniform']:.4f}; {m['train_seconds']:.0f} s"
        )
    return 0
