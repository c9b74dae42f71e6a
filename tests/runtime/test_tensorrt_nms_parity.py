"""In-graph NMS (ONNX NonMaxSuppression, what TensorRT's parser turns into an INMSLayer) keeps what edgekit's
host NMS keeps.

The ONNX op runs here in ONNX Runtime (the oracle for the op's semantics); ``tests/runtime/test_tensorrt.py``
checks TensorRT's INMSLayer against ONNX Runtime on a GPU. Together: host NMS == ONNX NMS == TensorRT's. Host
candidates carry one label each (the decoder's best class), so the ONNX scores hold each candidate's score in its
own class's row and 0 elsewhere; ``score > conf`` (strict) and IoU ``>`` threshold suppress on both sides.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.runtime.nms import postprocess


def onnx_nms(boxes: np.ndarray, scores: np.ndarray, iou: float, conf: float) -> np.ndarray:
    """ONNX Runtime's NonMaxSuppression on [1, N, 4] xyxy boxes and [1, C, N] scores: [K, 3] (batch, class, index)."""
    n = boxes.shape[1]
    graph = helper.make_graph(
        [helper.make_node("NonMaxSuppression", ["boxes", "scores", "k", "iou", "conf"], ["selected"])], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, list(boxes.shape)),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, list(scores.shape))],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["k", 3])],
        [numpy_helper.from_array(np.array([n], np.int64), "k"),
         numpy_helper.from_array(np.array([iou], np.float32), "iou"),
         numpy_helper.from_array(np.array([conf], np.float32), "conf")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"boxes": boxes, "scores": scores})[0]


@pytest.mark.parametrize("seed", range(3))
def test_onnx_nms_keeps_what_host_nms_keeps(seed):
    rng = np.random.default_rng(seed)
    n, classes = 300, 4
    centres = rng.random((12, 2)) * 200  # clusters: many overlapping boxes per object
    xy = centres[rng.integers(0, 12, n)] + rng.normal(0, 6, (n, 2))
    wh = 20 + rng.random((n, 2)) * 30
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    labels = rng.integers(0, classes, n)
    iou, conf = 0.45, 0.25
    [(kept_boxes, kept_scores, kept_labels)] = postprocess(
        boxes[None], scores[None], labels[None], conf_threshold=conf, iou_threshold=iou, class_agnostic=False,
        pre_nms_topk=n, max_detections=n)
    per_class = np.zeros((1, classes, n), np.float32)
    per_class[0, labels, np.arange(n)] = scores
    selected = onnx_nms(boxes[None], per_class, iou, conf)
    host = sorted(zip(kept_labels.tolist(), kept_scores.tolist()))
    graph = sorted((int(c), float(scores[i])) for _, c, i in selected)
    assert len(host) > 10 and host == graph
    np.testing.assert_array_equal(np.sort(kept_boxes, axis=0), np.sort(boxes[selected[:, 2]], axis=0))
