"""Benchmark: edgekit's numpy post-processing vs ONNX Runtime's NonMaxSuppression operator.

Input: what a YOLOv8 head at 640x640 hands to post-processing — 8,400 candidates (80x80 + 40x40 +
20x20 anchors) x 80 classes, with ~50 objects. Anchors inside an object predict a jittered copy of
its box and a high score for its class (falling off with distance from the centre); every other
class score, and every background anchor, is sigmoid(noise around -9), so a realistic fraction of
candidates clears conf 0.001 and few clear 0.25.

Timed, as medians over --runs interleaved repetitions after warm-up, all in this one process:
- edgekit ``postprocess`` on best-class scores/labels [1, 8400] (class-aware NMS, pre-NMS top-k 1000,
  max 300 detections), and the same preceded by the best-class reduction over the [80, 8400] class
  scores (the part of decoding that replaces per-class scores; argmax + gather, as decode does).
- ONNX Runtime ``NonMaxSuppression`` (opset 17, one-node graph, 1 thread) on the full scores
  [1, 80, 8400] — multi-label per-class NMS, what an ONNX-embedded NMS does — and on best-class
  scores only (other classes zeroed: the same problem edgekit solves, minus the top-k).
  max_output_boxes_per_class = 300.

Usage: python benchmarks/bench_nms.py [--runs N] [--warmup N] [--iou F] [--seed N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import interleaved
from edgekit.runtime.nms import postprocess

NUM_CLASSES = 80
IMAGE_SIZE = 640
STRIDES = (8, 16, 32)
PRE_NMS_TOPK = 1000
MAX_DETECTIONS = 300


def yolo_like_candidates(seed: int, num_objects: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """boxes float32 [8400, 4] xyxy and per-class scores float32 [8400, 80] (sigmoid outputs)."""
    rng = np.random.default_rng(seed)
    centres = []
    for stride in STRIDES:
        cells = IMAGE_SIZE // stride
        gy, gx = np.mgrid[0:cells, 0:cells]
        centres.append(np.stack([(gx.ravel() + 0.5) * stride, (gy.ravel() + 0.5) * stride], axis=1))
    anchors = np.concatenate(centres)                                   # [8400, 2]
    n = len(anchors)

    obj_wh = rng.uniform(20, 250, (num_objects, 2))
    obj_c = rng.uniform(obj_wh / 2, IMAGE_SIZE - obj_wh / 2)
    obj_cls = rng.integers(0, NUM_CLASSES, num_objects)

    logits = rng.normal(-9.0, 1.2, (n, NUM_CLASSES))                    # background
    # Background anchors predict small boxes around themselves.
    wh = rng.uniform(8, 60, (n, 2))
    cxy = anchors + rng.normal(0, 4, (n, 2))
    # Each anchor inside an object's box (nearest object centre wins) predicts that object.
    d = (anchors[:, None, :] - obj_c[None]) / (obj_wh[None] / 2)         # [n, objects, 2], |d| < 1 inside
    inside = (np.abs(d) < 1).all(axis=2)
    dist2 = np.where(inside, (d ** 2).sum(axis=2), np.inf)
    owner = dist2.argmin(axis=1)
    has_owner = np.isfinite(dist2.min(axis=1))
    rows = np.flatnonzero(has_owner)
    k = owner[rows]
    cxy[rows] = obj_c[k] + rng.normal(0, 0.05, (len(rows), 2)) * obj_wh[k]
    wh[rows] = obj_wh[k] * rng.uniform(0.85, 1.15, (len(rows), 2))
    logits[rows, obj_cls[k]] = 3.0 - 9.0 * dist2[rows, k] + rng.normal(0, 0.7, len(rows))
    scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    boxes = np.concatenate([cxy - wh / 2, cxy + wh / 2], axis=1).clip(0, IMAGE_SIZE).astype(np.float32)
    return boxes, scores


def ort_nms_session():
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_threshold"],
                            ["selected"], center_point_box=0)
    graph = helper.make_graph(
        [node], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, "N", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, "C", "N"]),
         helper.make_tensor_value_info("max_out", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("score_threshold", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["K", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    # No spin-waiting after a run: it would steal CPU from whatever is timed next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]), ort.__version__


def median_ms(fns: dict, runs: int, warmup: int) -> dict:
    """Median wall time per callable in ms, interleaved in a fresh random order each round
    (``benchmarks.timing``), so machine drift and after-effects of the previous call hit every callable alike.
    No settle pause: NMS is numpy on the calling thread, no worker pool is left spinning."""
    times = interleaved(fns, runs, warmup, settle_ms=0.0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iou", type=float, default=0.45)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    boxes, class_scores = yolo_like_candidates(args.seed)
    best = class_scores.max(axis=1)
    labels = class_scores.argmax(axis=1).astype(np.int64)
    session, ort_version = ort_nms_session()
    all_classes = np.ascontiguousarray(class_scores.T[None])                       # [1, 80, 8400]
    per_class = all_classes[0]
    best_only = np.zeros_like(all_classes)
    best_only[0, labels, np.arange(len(labels))] = best

    def ours(conf: float):
        return postprocess(boxes[None], best[None], labels[None], conf_threshold=conf, iou_threshold=args.iou,
                           class_agnostic=False, pre_nms_topk=PRE_NMS_TOPK, max_detections=MAX_DETECTIONS)

    def ours_with_best_class(conf: float):
        # As edgekit.runtime.decode does it on a YOLOv8 [84, 8400] head: argmax over the class axis
        # of the [80, 8400] block, then a gather (one heavy pass instead of max + argmax).
        lab = per_class.argmax(axis=0)
        s = np.take_along_axis(per_class, lab[None], axis=0)[0]
        return postprocess(boxes[None], s[None], lab[None], conf_threshold=conf, iou_threshold=args.iou,
                           class_agnostic=False, pre_nms_topk=PRE_NMS_TOPK, max_detections=MAX_DETECTIONS)

    def ort_run(scores: np.ndarray, conf: float):
        return session.run(None, {
            "boxes": boxes[None], "scores": scores, "max_out": np.array([MAX_DETECTIONS], np.int64),
            "iou": np.array([args.iou], np.float32), "score_threshold": np.array([conf], np.float32)})[0]

    confs = (0.001, 0.25)
    variants = {
        "ours": lambda conf: len(ours(conf)[0][0]),
        "ours+best": lambda conf: len(ours_with_best_class(conf)[0][0]),
        "ort_all": lambda conf: len(ort_run(all_classes, conf)),
        "ort_best": lambda conf: len(ort_run(best_only, conf)),
    }
    # Every (variant, conf) pair is timed in the same interleaved loop.
    fns = {(name, conf): (lambda fn=fn, conf=conf: fn(conf)) for conf in confs for name, fn in variants.items()}
    ms = median_ms(fns, args.runs, args.warmup)
    rows = []
    for conf in confs:
        rows.append((conf, int((best > np.float32(conf)).sum()), {name: ms[name, conf] for name in variants},
                     {name: fn(conf) for name, fn in variants.items()}))

    print(f"NMS post-processing, 8400 candidates x {NUM_CLASSES} classes, IoU {args.iou}, "
          f"pre-NMS top-k {PRE_NMS_TOPK}, max {MAX_DETECTIONS} detections; medians of {args.runs} runs "
          f"(warm-up {args.warmup}); numpy {np.__version__}, onnxruntime {ort_version}, 1 thread; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.\n")
    print("| conf | candidates > conf (best class) | edgekit postprocess (ms) | edgekit + best-class reduction (ms) "
          "| ORT NMS, [1,80,8400] (ms) | ORT NMS, best class only (ms) | ORT all / edgekit | ORT best / edgekit "
          "| detections edgekit / ORT all / ORT best |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for conf, passed, ms, count in rows:
        print(f"| {conf} | {passed} | {ms['ours']:.2f} | {ms['ours+best']:.2f} | {ms['ort_all']:.2f} "
              f"| {ms['ort_best']:.2f} | {ms['ort_all'] / ms['ours']:.1f}x | {ms['ort_best'] / ms['ours']:.1f}x "
              f"| {count['ours']} / {count['ort_all']} / {count['ort_best']} |")
    print(f"\ncommand: python benchmarks/bench_nms.py --runs {args.runs} --warmup {args.warmup} "
          f"--iou {args.iou} --seed {args.seed}")


if __name__ == "__main__":
    main()
