"""Real yolov5n INT8 on ONNX Runtime, OpenVINO and NCNN, judged against its FP32 model on real photos (issue 12).

Runs the user's commands and nothing else:

    edgekit convert yolov5n.pt --target onnxruntime-cpu --precision int8 --calib <natural> --calib-method M
    edgekit convert yolov5n.pt --target intel-cpu --precision int8 --calib-cache <that calibration.json>
    edgekit convert yolov5n.pt --target raspberry-pi-5 --imgsz 640 --precision int8 --calib <natural> \
        --calib-method M --drift-budget B      (NCNN: its own search for layers to keep in float)
    edgekit validate ARTIFACT --data <13 real photos> --report DIR      (per artifact)

Calibration: edgekit/zoo/calibration/natural only (54 scikit-image photos, none of them judged). The photos
judged: coco8's 8 (with labels) + FastestDet's 5 (no labels), as a YOLO-layout folder of symlinks: agreement
compares detections with detections; its mAP is not coco8's (the FastestDet photos have no ground truth), so
coco8 alone is validated too, for mAP.

    python benchmarks/bench_yolov5n_int8.py --out /tmp/yolov5n-int8 [--method minmax] [--ncnn-budget 1]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.quant.test_int8_yolov5n import CHECKPOINT, COCO8, real_photos_dataset  # noqa: E402

NATURAL = REPO / "edgekit" / "zoo" / "calibration" / "natural"


def run(command: list[str], log: Path) -> float:
    print("$", shlex.join(command), flush=True)
    started = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
    seconds = time.perf_counter() - started
    lines = [line for line in log.read_text().splitlines() if "img/s" not in line and "it/s" not in line]
    for line in lines:
        if line.startswith(("note", "int8", "gate", "build", "warning", "error", "|", "wrote")):
            print("   ", line[:240])
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): see {log}")
    print(f"    ({seconds:.0f} s)", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--method", default="minmax")
    parser.add_argument("--ncnn-budget", type=float, default=1.0, help="--drift-budget of the NCNN conversion")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    photos = out / "photos"
    if not photos.exists():
        real_photos_dataset(photos)
    edgekit = [str(Path(sys.executable).with_name("edgekit"))]  # the console script of this environment
    common = [str(CHECKPOINT), "--precision", "int8", "--force"]
    ort, ov, ncnn = out / "ort", out / "ov", out / "ncnn"
    seconds = {}
    seconds["ort"] = run([*edgekit, "convert", *common, "--target", "onnxruntime-cpu", "--calib", str(NATURAL),
                          "--calib-method", args.method, "-o", str(ort)], out / "convert_ort.log")
    seconds["ov"] = run([*edgekit, "convert", *common, "--target", "intel-cpu", "--calib-cache",
                         str(ort / "calibration.json"), "-o", str(ov)], out / "convert_ov.log")
    seconds["ncnn"] = run([*edgekit, "convert", *common, "--target", "raspberry-pi-5", "--imgsz", "640", "--calib",
                           str(NATURAL), "--calib-method", args.method, "--drift-budget", str(args.ncnn_budget),
                           "-o", str(ncnn)], out / "convert_ncnn.log")
    summary = {"convert_seconds": seconds, "reports": {}}
    for name, artifact in (("ort", ort), ("ov", ov), ("ncnn", ncnn)):
        for data_name, data in (("photos", photos), ("coco8", COCO8)):
            report = out / f"report_{name}_{data_name}"
            run([*edgekit, "validate", str(artifact), "--data", str(data), "--report", str(report)],
                out / f"validate_{name}_{data_name}.log")
            summary["reports"][f"{name}/{data_name}"] = json.loads((report / "report.json").read_text())
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out / 'summary.json'}")


if __name__ == "__main__":
    main()
