"""`make demo`: the whole chain on the bundled trained fixture, end to end.

1. export the bundled YOLOv8-style checkpoint (trained by tools/train_fixtures.py) through the
   graph passes to ONNX, with the measured error of every pass;
2. run it with the numpy runtime on ONNX Runtime on the bundled images, next to the PyTorch
   reference, and print the parity;
3. convert it for every target whose backend runs on this machine;
   at every precision, INT8 included: calibrated once on the bundled calibration set, the one
   result reused (``calibration.json``) for every backend's int8 model;
4. validate every backend/precision on the synthetic validation split (mAP, Δ vs PyTorch,
   agreement, latency);
5. write the drift report (markdown, JSON, plots, side-by-side images) and say where it is.

    python -m edgekit.demo [--family yolov8] [--out demo_output] [--val-images 300]
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

from edgekit.errors import EdgekitError


def zoo_path(name: str) -> Path:
    return Path(str(resources.files("edgekit") / "zoo" / name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="edgekit end-to-end demo on a bundled trained fixture")
    parser.add_argument("--family", default="yolov8")
    parser.add_argument("--out", default="demo_output")
    parser.add_argument("--val-images", type=int, default=300)
    args = parser.parse_args(argv)
    try:
        run(args.family, Path(args.out), args.val_images)
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def run(family: str, out: Path, val_images: int) -> None:
    import torch

    from edgekit.convert.chain import convert, export_artifact
    from edgekit.models.loading import load_checkpoint
    from edgekit.progress import progress_bar
    from edgekit.quant.pipeline import Int8Options
    from edgekit.reference.detector import ReferenceDetector
    from edgekit.runtime.artifact import CALIBRATION_FILE
    from edgekit.runtime.backends import get_runner_class
    from edgekit.runtime.detector import Detector
    from edgekit.runtime.draw import draw_detections
    from edgekit.targets import load_target, target_names
    from edgekit.validate import synth
    from edgekit.validate.compare import compare_detections
    from edgekit.validate.datasets import load_dataset
    from edgekit.validate.run import format_table, validate_artifacts

    torch.set_num_threads(2)
    checkpoint = zoo_path(f"{family}.pt")
    if not checkpoint.is_file():
        raise EdgekitError(f"{checkpoint}: no bundled fixture for {family!r}; train it with "
                           f"python tools/train_fixtures.py --families {family}")
    out.mkdir(parents=True, exist_ok=True)
    model = load_checkpoint(checkpoint)
    recorded = getattr(model, "metrics", {})

    _section(f"1. export {checkpoint.name} ({family}, {model.spec.input_size[0]}x{model.spec.input_size[1]}, "
             f"{model.spec.num_classes} classes)")
    if recorded:
        print(f"recorded at training: mAP@.5:.95 {recorded.get('map_50_95', float('nan')):.4f} on the synthetic "
              f"{recorded.get('split', 'val')} split (seed {recorded.get('val_seed', 0)})")
    onnx_artifact = out / f"{family}_onnx"
    export_artifact(model, onnx_artifact, source=str(checkpoint), progress=print)
    print(f"wrote {onnx_artifact}")

    _section("2. detect on the bundled images: ONNX Runtime (numpy runtime) vs PyTorch reference")
    images = sorted(zoo_path("images").glob("*.jpg"))
    reference = ReferenceDetector(model, model.spec)
    names = model.spec.class_names
    drawn = out / "detections"
    drawn.mkdir(exist_ok=True)
    with Detector.load(onnx_artifact) as detector:
        for image in images:
            ours, theirs = detector.detect(image), reference.detect(image)
            stats = compare_detections([theirs], [ours], iou_threshold=0.99)
            found = ", ".join(f"{names[label]} {score:.2f}" for score, label in zip(ours.scores[:6], ours.labels[:6]))
            print(f"{image.name}: {len(ours)} objects ({found}{', …' if len(ours) > 6 else ''})")
            print(f"    parity vs PyTorch: {stats.matched}/{stats.reference_count} matched at IoU ≥ 0.99, "
                  f"min IoU {stats.min_iou:.5f}, max |Δscore| {stats.max_score_delta:.1e}")
            draw_detections(image, ours, names).save(drawn / image.name, quality=92)
    print(f"images with boxes drawn: {drawn}")

    _section("3. convert for every target whose backend runs here")
    converted = []
    calibration: Path | None = None
    int8_manifest = None
    built: set[tuple[str, str]] = {("onnxruntime", "fp32")}  # one artifact per backend/precision is enough here
    for name in target_names():
        target = load_target(name)
        try:
            runs_here = get_runner_class(target.backend).is_available()
        except EdgekitError:
            runs_here = False
        if not runs_here or target.backend_options.get("device", "CPU") != "CPU":
            print(f"{name:<18} skipped: {target.backend} {target.backend_options.get('device', '')} does not run on this machine")
            continue
        precisions = [p for p in target.precisions if (target.backend, p) not in built]
        built.update((target.backend, p) for p in precisions)
        for precision in precisions:
            artifact = out / f"{family}_{name}_{precision}"
            started = time.perf_counter()
            # at the fixture's own input size: the target's default size is for real cameras, not 160 px scenes
            int8 = None
            if precision == "int8":
                # calibrate once; later int8 builds reuse the result (refused if it were another model's)
                int8 = Int8Options(cache=calibration) if calibration else Int8Options()
            manifest = convert(model, target, artifact, precision=precision, input_size=model.spec.input_size,
                               source=str(checkpoint), int8=int8, progress=lambda _: None)
            if precision == "int8":
                calibration = calibration or artifact / CALIBRATION_FILE
                int8_manifest = int8_manifest or manifest  # the one that calibrated (the others reuse it)
                built.add(("onnxruntime", "int8"))
            parity = manifest.info["parity"]
            worst = max((p.get("max_rel", 0.0) for p in parity.values() if p.get("checked", True)), default=0.0)
            print(f"{name:<18} {target.backend}/{precision:<5} built in {time.perf_counter() - started:5.1f} s, "
                  f"max rel tensor error vs PyTorch {worst:.1e} -> {artifact}")
            converted.append(artifact)

    _section(f"4. validate on the synthetic validation split ({val_images} images, seed 0)")
    data = out / "data" / "val"
    if not (data / "annotations" / "instances.json").is_file():
        synth.generate(data, "val", 0, num_images=val_images, overwrite=True)
    dataset = load_dataset(data)
    report = validate_artifacts([onnx_artifact, *converted], dataset, reference_model=model, progress=progress_bar)
    print(format_table(report))

    _section("5. drift report")
    from edgekit.validate.report import write_drift_report

    if int8_manifest is not None:
        info = int8_manifest.info["int8"]
        print(f"int8: {info['quantized_layers']} of {info['layers']} layers in int8, calibrated once ({info.get('method')}, "
              f"{info.get('images')} images from {info.get('calibration_dir')}) and reused for every backend")
    written = write_drift_report(report, dataset, out / "drift_report", manifest=int8_manifest)
    print(f"drift report (FP32 / FP16 / INT8 per backend vs PyTorch): {written['report.md']}")
    print(f"\nartifacts, drawings and data are in {out}/")


if __name__ == "__main__":
    sys.exit(main())
