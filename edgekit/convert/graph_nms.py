"""NMS inside the graph: append the head's decode, a top-k and ONNX ``NonMaxSuppression`` to a detector graph.

TensorRT's ONNX parser turns ``NonMaxSuppression`` into an INMSLayer, so the engine returns the kept boxes
instead of every raw head cell (the choice ``nms = "graph"`` of a TensorRT target; host NMS stays the default).
The tail is written once for every head kind by tracing edgekit's torch reference decoder
(``edgekit.reference.decode``, the oracle the numpy decoders are tested against) with the raw head outputs as
its inputs, then merged onto the model's graph (``onnx.compose``): per image

1. decode: boxes ``[B, N, 4]`` xyxy, best-class score and label ``[B, N]``;
2. the ``pre_nms_topk`` best candidates (ONNX TopK: descending, equal scores by lower index — the host's order);
3. per-class scores ``[B, C, k]`` holding each candidate's score in its own class's row and 0 elsewhere (one row
   when class-agnostic), so that NMS per class is NMS among candidates of one label, as on the host;
4. ``NonMaxSuppression`` (``score > conf``, suppressed when IoU ``> iou``, at most ``max_detections`` per class);
5. the kept rows gathered into the output contract of ``edgekit.runtime.graph_nms``.

Every step but 4 is the host's arithmetic in the same order, so the kept boxes are the host NMS's; the parity
tests run the appended graph in ONNX Runtime against the host path (TensorRT's own INMSLayer is compared with
ONNX Runtime on a GPU, where there is one).
"""

from __future__ import annotations

import io
import tempfile
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import compose

from edgekit.errors import ConversionError, first_line
from edgekit.reference.decode import decode as reference_decode
from edgekit.runtime.graph_nms import BATCH_OUTPUT, DETECTIONS_OUTPUT, GraphNms
from edgekit.spec import ModelSpec

#: prefix of every name the tail brings into the merged graph (no clash with the model's own names)
TAIL_PREFIX = "edgekit_nms/"


class _NonMaxSuppression(torch.autograd.Function):
    """Emits ONNX ``NonMaxSuppression`` with constant limits (TensorRT's parser wants its thresholds as
    initializers). The eager forward is only run while tracing, where the values do not matter: it returns no
    selection (the ops after it are recorded on their shapes, not their contents)."""

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou: float,
                conf: float) -> torch.Tensor:
        return torch.zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou: float, conf: float):
        return g.op("NonMaxSuppression", boxes, scores,
                    g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
                    g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
                    g.op("Constant", value_t=torch.tensor([conf], dtype=torch.float32)))


class NmsTail(torch.nn.Module):
    """Raw head outputs (``spec.head.output_names`` order) -> (rows ``[S, 8]``, batch marker ``[B]``)."""

    def __init__(self, spec: ModelSpec, nms: GraphNms) -> None:
        super().__init__()
        self.spec = spec
        self.nms = nms

    def forward(self, *raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores, labels = reference_decode(list(raw), self.spec)  # [B, N, 4], [B, N], [B, N]
        k = min(self.nms.pre_nms_topk, int(scores.shape[1]))
        top_scores, order = torch.topk(scores, k, dim=1)  # [B, k], descending
        top_boxes = torch.gather(boxes, 1, order.unsqueeze(-1).expand(-1, -1, 4))
        top_labels = torch.gather(labels, 1, order)
        if self.nms.class_agnostic:
            class_scores = top_scores.unsqueeze(1)  # [B, 1, k]
        else:
            classes = torch.arange(self.spec.num_classes, dtype=top_labels.dtype).view(1, -1, 1)
            class_scores = (top_labels.unsqueeze(1) == classes).to(top_scores.dtype) * top_scores.unsqueeze(1)
        selected = _NonMaxSuppression.apply(top_boxes, class_scores, self.nms.max_detections,
                                            self.nms.iou_threshold, self.nms.conf_threshold)  # [S, 3]
        image, rank = selected[:, 0], selected[:, 2]
        flat = image * k + rank  # index into the [B * k] flattened top-k
        rows = torch.cat([image.unsqueeze(1).to(torch.float32),
                          top_boxes.reshape(-1, 4).index_select(0, flat),
                          top_scores.reshape(-1).index_select(0, flat).unsqueeze(1),
                          top_labels.reshape(-1).index_select(0, flat).unsqueeze(1).to(torch.float32),
                          rank.unsqueeze(1).to(torch.float32)], dim=1)
        return rows, top_scores[:, 0]


def default_opset(model: onnx.ModelProto) -> int:
    """The model's ONNX (default domain) opset."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def output_shapes(model: onnx.ModelProto, spec: ModelSpec) -> list[tuple[int, ...]]:
    """The raw outputs' shapes at batch 1, from a run of ONNX Runtime (their shapes are not always annotated)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    height, width = spec.input_size
    outputs = session.run(list(spec.head.output_names),
                          {spec.input_name: np.zeros((1, 3, height, width), np.float32)})
    return [tuple(np.asarray(out).shape) for out in outputs]


def nms_tail(spec: ModelSpec, nms: GraphNms, shapes: list[tuple[int, ...]], opset: int) -> onnx.ModelProto:
    """The tail alone: inputs named like the raw outputs (``shapes`` at batch 1; the batch axis is dynamic),
    outputs :data:`DETECTIONS_OUTPUT` and :data:`BATCH_OUTPUT`."""
    if not spec.postprocess.nms:
        raise ConversionError(f"nms = \"graph\": head {spec.head.kind!r} needs no NMS (its postprocess has nms off)")
    dummies = tuple(torch.zeros(shape, dtype=torch.float32) for shape in shapes)
    names = list(spec.head.output_names)
    try:
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(), \
                redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")  # tracer warnings: the decoders' Python checks become constants
            path = Path(folder) / "tail.onnx"
            torch.onnx.export(NmsTail(spec, nms), dummies, str(path), dynamo=False, opset_version=opset,
                              input_names=names, output_names=[DETECTIONS_OUTPUT, BATCH_OUTPUT],
                              dynamic_axes={**{name: {0: "batch"} for name in names},
                                            DETECTIONS_OUTPUT: {0: "kept"}, BATCH_OUTPUT: {0: "batch"}})
            return onnx.load(str(path))
    except Exception as exc:
        raise ConversionError(f"nms = \"graph\": the {spec.head.kind!r} decoder does not export to ONNX "
                              f"({type(exc).__name__}: {first_line(exc)})") from None


def append_nms(model: onnx.ModelProto, spec: ModelSpec, tail: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (image -> raw head outputs) with ``tail`` (:func:`nms_tail` of the same spec, at the model's
    opset) appended: image -> (rows, batch marker). One tail serves every form of a model (fp32, fp16, Q/DQ): it
    is traced once. The model's metadata (the embedded spec) is dropped: the result's outputs are not that spec's.
    """
    if default_opset(tail) != default_opset(model):
        raise ConversionError(f"nms = \"graph\": the NMS tail is at opset {default_opset(tail)}, the model at "
                              f"{default_opset(model)}")
    tail = compose.add_prefix(tail, TAIL_PREFIX)  # a copy: the caller's tail stays as it is
    tail.ir_version = model.ir_version
    head = onnx.ModelProto()
    head.CopyFrom(model)
    del head.metadata_props[:]
    try:
        merged = compose.merge_models(head, tail, io_map=[(name, TAIL_PREFIX + name)
                                                          for name in spec.head.output_names])
    except Exception as exc:  # an IR mismatch or a name the raw outputs lack
        raise ConversionError(f"nms = \"graph\": cannot append NMS to the graph ({first_line(exc)})") from None
    for output in merged.graph.output:  # the contract's names, not the prefixed ones
        output.name = output.name[len(TAIL_PREFIX):] if output.name.startswith(TAIL_PREFIX) else output.name
    renamed = {TAIL_PREFIX + DETECTIONS_OUTPUT: DETECTIONS_OUTPUT, TAIL_PREFIX + BATCH_OUTPUT: BATCH_OUTPUT}
    for node in merged.graph.node:
        for index, name in enumerate(node.output):
            if name in renamed:
                node.output[index] = renamed[name]
    onnx.checker.check_model(merged)
    return merged
