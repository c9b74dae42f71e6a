"""Train the built-in fixture detectors on the synthetic shapes dataset and save them to the zoo.

    python tools/train_fixtures.py [--families yolov8 yolox ...] [--epochs N] [--seed 0]
                                   [--data-dir DIR] [--out edgekit/zoo] [--threads 2]

For every family: generate (once) the synthetic train split (``--seed``) and the val split
(always ``--split val --seed 0``: the split the accuracy bar is measured on) with
``tools/synth.py``; build a small model (``FAMILY_RECIPES`` below: width, depth, epochs, batch
size, learning rate), train it on CPU with ``edgekit.models.training``, score it on the val split
(COCO mAP through the numpy runtime decoder + NMS), and save ``OUT/<family>.pt`` in edgekit's
checkpoint format (loads with ``torch.load(weights_only=True)``) with the metrics inside.

Then print a markdown table (family, parameters, epochs, train time, mAP@0.5:0.95, mAP@0.5) of
every checkpoint in ``OUT`` and write it, with the commands that produced them, to
``benchmarks/fixtures_training.md``. The table is rebuilt from the checkpoints' own metrics, so
families trained by separate invocations all appear.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python tools/train_fixtures.py` from a checkout
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from edgekit.errors import EdgekitError  # noqa: E402
from edgekit.models import ModelConfig, build_model  # noqa: E402
from edgekit.models.loading import save_checkpoint  # noqa: E402
from edgekit.models.training import (  # noqa: E402
    NO_AUGMENT, AugmentConfig, TrainConfig, TrainingSet, evaluate, make_loss, train,
)
from edgekit.runtime.preprocess import load_image  # noqa: E402
from edgekit.validate import synth  # noqa: E402
from edgekit.validate.datasets import Dataset, load_dataset  # noqa: E402

FAMILIES = ("yolov8", "yolox", "yolov5", "yolov6", "centernet", "ssd")
VAL_SEED = 0
VAL_IMAGES = 300
MAP_BAR = 0.5


@dataclass(frozen=True)
class Recipe:
    """How one family is trained: model scale, schedule and data amount."""

    width: float = 0.25
    depth: float = 0.33
    input_size: tuple[int, int] = (160, 160)
    augment: str = "light"
    epochs: int = 8
    batch_size: int = 8
    learning_rate: float = 2e-3
    train_images: int = 4000
    # torch 2.13's CPU backward corrupts the heap (SIGSEGV / "double free") on yolov6's RepVGG
    # layout in channels_last at every width tried (0.125 and 0.25, 64 and 160 px); contiguous is fine.
    channels_last: bool = True
    # Keyword options of the family's loss (edgekit.models.training.make_loss), as (name, value) pairs.
    loss_options: tuple[tuple[str, object], ...] = ()


# The default recipe is the one measured best for yolov8 on this 2-core CPU (benchmarks/RESULTS.md:
# 4000 fresh images beat more epochs over fewer images).
AUGMENTS = {
    "default": AugmentConfig(),
    # Train and val come from the same generator, so fresh images can stand in for geometric jitter.
    "light": AugmentConfig(scale_range=(1.0, 1.0), translate=0.0),
    "none": NO_AUGMENT,
}

# Per-family recipes (benchmarks/RESULTS.md, "Fixture training"): yolov8 clears mAP 0.5 in 8 epochs,
# yolox in 10 (6 already), yolov5 and yolov6 in 16. centernet needs width 0.5 (0.46 after 16 epochs at
# 0.25, 0.55 at 0.5). ssd runs at 256 px (the 160-px images upsampled; at 160 px its stride-8 priors
# reach only 66 % of the boxes at IoU 0.5 and it stopped at 0.27) with the FPN path and width 0.375:
# 0.550 after 16 epochs. Width 0.25 got 0.535 after 24 but lost 1.2-1.8 mAP points in int8 on ONNX
# Runtime and NCNN (0.5 and 0.0 at 0.375). ~20-40 CPU-minutes per family.
FAMILY_RECIPES: dict[str, Recipe] = {
    "yolov8": Recipe(),
    "yolox": Recipe(epochs=10),
    "yolov5": Recipe(epochs=16),
    "yolov6": Recipe(epochs=16, channels_last=False),
    "centernet": Recipe(width=0.5, epochs=16),
    "ssd": Recipe(width=0.375, input_size=(256, 256), epochs=16),
}


def ensure_split(root: Path, split: str, seed: int, num_images: int) -> Dataset:
    """The synthetic ``split`` in ``root``, generated with tools/synth.py when missing, too small, or
    drawn by an earlier revision of the generator (synth.is_current re-draws a few images to tell).

    Image i depends only on (seed, split, i), so a larger regeneration keeps the first images.
    """
    folder = root / f"{split}-seed{seed}"
    if folder.exists():
        try:
            dataset = load_dataset(folder)
            if len(dataset.items) >= num_images and synth.is_current(folder, split, seed):
                return dataset
        except EdgekitError:
            pass
    print(f"generating synthetic {split} split (seed {seed}, {num_images} images) in {folder}", flush=True)
    synth.generate(folder, split, seed, num_images, overwrite=True, progress=True)
    return load_dataset(folder)


def train_family(family: str, recipe: Recipe, train_set: Dataset, val_set: Dataset, args: argparse.Namespace,
                 command: str) -> dict:
    """Train, score and save one family; returns the metrics stored in its checkpoint."""
    config = ModelConfig(family, num_classes=len(train_set.class_names), input_size=recipe.input_size,
                         width=recipe.width, depth=recipe.depth)
    torch.manual_seed(args.seed)  # the initial weights are part of the reproducible result
    model = build_model(config, train_set.class_names)
    params = sum(p.numel() for p in model.parameters())
    data = TrainingSet(train_set, model.spec, max_images=recipe.train_images)
    val_images = [load_image(val_set.image_path(item)) for item in val_set.items]
    train_config = TrainConfig(epochs=recipe.epochs, batch_size=recipe.batch_size,
                               learning_rate=recipe.learning_rate, seed=args.seed, num_threads=args.threads,
                               augment=AUGMENTS[recipe.augment], progress=not args.no_progress,
                               channels_last=recipe.channels_last)

    def report_epoch(epoch: int, ema_model: torch.nn.Module, losses: dict) -> None:
        parts = " ".join(f"{k} {v:.3f}" for k, v in losses.items() if k not in ("epoch", "seconds", "cpu_seconds"))
        line = (f"[{family}] epoch {epoch}/{recipe.epochs} {losses['seconds']:.0f}s "
                f"(cpu {losses['cpu_seconds']:.0f}s) {parts}")
        if args.eval_every and (epoch % args.eval_every == 0) and epoch != recipe.epochs:
            ema_model.spec = model.spec
            result = evaluate(ema_model, val_set, images=val_images)
            line += f" | val mAP {result.map_50_95:.4f} mAP50 {result.map_50:.4f}"
        print(line, flush=True)

    print(f"[{family}] {params / 1e6:.2f} M parameters, {len(data)} train images, {recipe}", flush=True)
    # Training state after every epoch, so an interrupted run (shared machines) picks up where it
    # stopped when the same command is run again; named by everything that shapes the result.
    key = hashlib.sha256(repr((family, recipe, args.seed, len(data))).encode()).hexdigest()[:12]
    resume_path = Path(args.data_dir) / "train-state" / f"{family}-{key}.pt"
    if resume_path.is_file():
        print(f"[{family}] resuming from {resume_path}", flush=True)
    loss_fn = make_loss(model.spec, **dict(recipe.loss_options))
    result = train(model, data, train_config, loss_fn=loss_fn, on_epoch_end=report_epoch, resume_path=resume_path)
    scores = evaluate(result.model, val_set, images=val_images)
    metrics = {
        "map_50_95": scores.map_50_95,
        "map_50": scores.map_50,
        "per_class_ap": dict(scores.per_class_ap),
        "split": "val",
        "val_seed": VAL_SEED,
        "train_seed": args.seed,
        "epochs": recipe.epochs,
        "num_val_images": len(val_set.items),
        "num_train_images": len(data),
        "batch_size": recipe.batch_size,
        "augment": recipe.augment,
        "learning_rate": recipe.learning_rate,
        "loss_options": {k: v for k, v in recipe.loss_options},
        "train_seconds": round(result.seconds, 1),
        "train_cpu_seconds": round(result.cpu_seconds, 1),
        "iterations": result.iterations,
        "threads": args.threads,
        "params": params,
        "command": command,
        "torch": str(torch.__version__),
        "machine": platform.machine(),
    }
    path = save_checkpoint(result.model, Path(args.out) / f"{family}.pt", metrics)
    # The zoo promise: tensors and plain containers only.
    torch.load(path, weights_only=True)
    resume_path.unlink(missing_ok=True)
    print(f"[{family}] val mAP@0.5:0.95 {scores.map_50_95:.4f}  mAP@0.5 {scores.map_50:.4f}  "
          f"({result.seconds / 60:.1f} min) -> {path}", flush=True)
    return metrics


def summary_table(out_dir: Path) -> tuple[str, list[str]]:
    """Markdown table of every fixture checkpoint in ``out_dir`` and the commands that made them."""
    rows = ["| family | params | epochs | train images | train time (wall) | CPU time | mAP@0.5:0.95 | mAP@0.5 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    commands: list[str] = []
    total_bytes = 0
    for family in FAMILIES:
        path = out_dir / f"{family}.pt"
        if not path.is_file():
            continue
        total_bytes += path.stat().st_size
        m = torch.load(path, weights_only=True).get("metrics", {})
        bar = "" if m.get("map_50_95", 0) >= MAP_BAR else " (below 0.5)"
        rows.append(f"| {family} | {m.get('params', 0) / 1e6:.2f} M | {m.get('epochs')} | {m.get('num_train_images')} | "
                    f"{m.get('train_seconds', 0) / 60:.1f} min | {m.get('train_cpu_seconds', 0) / 60:.1f} min | "
                    f"{m.get('map_50_95', 0):.3f}{bar} | {m.get('map_50', 0):.3f} |")
        if m.get("command") and m["command"] not in commands:
            commands.append(m["command"])
    rows.append(f"\nCheckpoints: {total_bytes / 1e6:.1f} MB in total (float32).")
    return "\n".join(rows), commands


def write_report(path: Path, table: str, commands: list[str], threads: int) -> None:
    text = [
        "# Fixture detectors: training on the synthetic shapes dataset",
        "",
        "Produced by `tools/train_fixtures.py` (CPU, "
        f"{threads} torch thread(s), {platform.processor() or platform.machine()}). mAP is COCO mAP "
        f"(pycocotools) on the val split (`tools/synth.py --split val --seed {VAL_SEED}`, {VAL_IMAGES} images), "
        "through the numpy runtime decoder + NMS (score threshold 0.001, NMS IoU 0.6, 100 detections per image). "
        "Train time is wall-clock on a machine shared with other jobs, so it is indicative only.",
        "",
        table,
        "",
        "Reproduce with:",
        "",
        "```",
        *commands,
        "```",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))


def loss_option(text: str) -> tuple[str, object]:
    """``NAME=VALUE`` -> (name, int | float | str): numbers become numbers, anything else stays text."""
    name, sep, value = text.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. assigner=task_aligned), got {text!r}")
    for convert in (int, float):
        try:
            return name, convert(value)
        except ValueError:
            pass
    return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train the fixture detectors on synthetic data and save them to the zoo.")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES, metavar="FAMILY",
                        help=f"families to train (default: all of {', '.join(FAMILIES)})")
    parser.add_argument("--epochs", type=int, default=None, help="override every family's recipe epochs")
    parser.add_argument("--train-images", type=int, default=None, help="override the number of training images")
    parser.add_argument("--input-size", type=int, default=None, help="override the square network input size")
    parser.add_argument("--width", type=float, default=None, help="override the width multiplier")
    parser.add_argument("--batch-size", type=int, default=None, help="override the batch size")
    parser.add_argument("--lr", type=float, default=None, help="override the peak learning rate")
    parser.add_argument("--augment", choices=sorted(AUGMENTS), default=None, help="override the augmentation")
    parser.add_argument("--loss-option", action="append", default=[], metavar="NAME=VALUE", type=loss_option,
                        help="set one keyword of the family's loss, e.g. assigner=task_aligned (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="train split seed and training seed (val is always seed 0)")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "edgekit-synth",
                        help="where the synthetic splits are generated / found")
    parser.add_argument("--out", type=Path, default=REPO / "edgekit" / "zoo", help="checkpoint folder")
    parser.add_argument("--report", type=Path, default=REPO / "benchmarks" / "fixtures_training.md")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--eval-every", type=int, default=0, help="also score val every N epochs (0: only at the end)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars (for logs)")
    args = parser.parse_args(argv)
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    command = "python tools/train_fixtures.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))

    recipes = {}
    for family in args.families:
        recipe = FAMILY_RECIPES[family]
        overrides = {"epochs": args.epochs, "train_images": args.train_images, "width": args.width,
                     "batch_size": args.batch_size, "learning_rate": args.lr, "augment": args.augment,
                     "input_size": (args.input_size, args.input_size) if args.input_size else None}
        recipe = replace(recipe, **{k: v for k, v in overrides.items() if v is not None})
        if args.loss_option:
            recipe = replace(recipe, loss_options=tuple({**dict(recipe.loss_options), **dict(args.loss_option)}.items()))
        recipes[family] = recipe
    try:
        train_set = ensure_split(args.data_dir, "train", args.seed, max(r.train_images for r in recipes.values()))
        val_full = ensure_split(args.data_dir, "val", VAL_SEED, VAL_IMAGES)
        val_set = replace(val_full, items=val_full.items[:VAL_IMAGES])
        for family, recipe in recipes.items():
            start = time.perf_counter()
            train_family(family, recipe, train_set, val_set, args, command.strip())
            print(f"[{family}] done in {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table, commands = summary_table(args.out)
    print(table)
    write_report(args.report, table, commands, args.threads)
    print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
