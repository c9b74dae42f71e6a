"""Imported Ultralytics / YOLOv5 checkpoints on every fp32 backend vs the upstream's own predictions.

For each real checkpoint in ``../shared/models/ultralytics`` (yolov8n / yolo11n / yolo26n trained on coco8 at 320,
the classic yolov5n release file at 640 — ``--imgsz 640``, as it records no training size) and each target
(``intel-cpu`` -> OpenVINO, ``raspberry-pi-5`` -> NCNN; ONNX Runtime runs the baseline model every artifact
carries), this runs the user flow through the Python API the CLI calls — ``edgekit convert <file> --target T
--precision fp32``, then ``edgekit detect <artifact> <13 images> --backend B --conf C`` — and matches the detections
with ``tests.parity_helpers.match_upstream`` against ``<name>.preds.conf{0.25,0.05}.json``.

Printed per model x backend x threshold: matched/upstream (same class, IoU >= 0.9, |Δscore| <= 0.03), strict %
(IoU >= 0.99, |Δscore| <= 0.005), min IoU and max |Δscore| over the matched pairs, our box count. The functions
are those of ``tests/models/test_ultralytics_backends.py`` (one definition of the flow).

    .venv/bin/python benchmarks/ultralytics_parity.py [--models yolov8n-coco8 ...] [--backends onnxruntime ...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekit.runtime.backends import get_runner_class
from tests.models.test_ultralytics_backends import (
    BACKENDS,
    CASES,
    CONFS,
    TARGETS,
    ULTRA,
    backend_predictions,
    convert_checkpoint,
    parity_row,
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[c.name for c in CASES], choices=[c.name for c in CASES])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    args = parser.parse_args()
    if not (ULTRA / "yolov8n-coco8.pt").is_file():
        print(f"{ULTRA} is not present", file=sys.stderr)
        return 1
    backends = [b for b in args.backends if get_runner_class(b).is_available()]
    skipped = sorted(set(args.backends) - set(backends))
    rows = ["| model (input) | backend | conf | matched / upstream | strict | min IoU | max abs Δscore | ours |",
            "|---|---|---|---|---|---|---|---|"]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-ultralytics-parity-") as tmp:
        for case in [c for c in CASES if c.name in args.models]:
            artifacts: dict[str, Path] = {}
            for backend in backends:
                # ONNX Runtime: the baseline entry of an artifact built for another backend (no extra conversion)
                target = TARGETS[backend] if backend != "onnxruntime" else \
                    next((TARGETS[b] for b in backends if b != "onnxruntime"), TARGETS["onnxruntime"])
                if target not in artifacts:
                    artifacts[target] = convert_checkpoint(case, target, Path(tmp) / f"{case.name}_{target}")
                found = backend_predictions(artifacts[target], backend)
                for conf in CONFS:
                    rows.append(parity_row(case, backend, conf, found[conf])[1])
                print(f"{case.name} / {backend}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    print("\n".join(rows))
    if skipped:
        print(f"\n(not installed here: {', '.join(skipped)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
