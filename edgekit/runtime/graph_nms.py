"""NMS inside the graph (TensorRT's INMSLayer): what the runtime needs to read such a model.

``edgekit.convert.graph_nms`` appends the head's decode, a top-k and ONNX ``NonMaxSuppression`` to a graph; the
model then outputs

- ``detections`` float32 ``[S, 8]``, one row per kept box of the whole batch: ``(image index, x1, y1, x2, y2,
  score, class, rank)`` — xyxy in network-input pixels; ``rank`` is the candidate's position in the per-image
  top-k (descending score, ties by candidate index), the order edgekit's host NMS keeps boxes in. ``S`` depends
  on the data (TensorRT sizes it after the run);
- ``nms_batch`` float32 ``[B]``: only its length is read (the batch size: an image with no box has no row).

The model entry records the thresholds the graph was built with (``ModelEntry.options["graph_nms"]``); a run
may raise the score threshold (boxes below it are dropped on the host) but not lower it, and must keep the IoU
threshold, the class-awareness and the pre-NMS top-k, and ask for at most the graph's detections per image:
anything else would need the candidates the graph already dropped, and is refused in one line instead of
answering with other boxes.
Torch-free and Python 3.8 (it runs on the device).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

from edgekit.errors import InputError, SpecError
from edgekit.spec import HeadSpec, ModelSpec, PostprocessSpec

HEAD_KIND = "nms_rows"
DETECTIONS_OUTPUT = "detections"
BATCH_OUTPUT = "nms_batch"
#: (image index, x1, y1, x2, y2, score, class, rank)
ROW_COLUMNS = 8


@dataclass(frozen=True)
class GraphNms:
    """The post-processing baked into the graph (the same meaning as :class:`edgekit.spec.PostprocessSpec`'s).

    The score test is strict (``score > conf_threshold``) and a box is suppressed when its IoU with a kept box of
    its class is ``> iou_threshold``, as in ONNX ``NonMaxSuppression``, TensorRT's INMSLayer and the host NMS.
    """

    conf_threshold: float
    iou_threshold: float
    class_agnostic: bool
    pre_nms_topk: int
    max_detections: int

    @classmethod
    def from_postprocess(cls, postprocess: PostprocessSpec) -> GraphNms:
        return cls(conf_threshold=float(postprocess.conf_threshold), iou_threshold=float(postprocess.iou_threshold),
                   class_agnostic=bool(postprocess.class_agnostic), pre_nms_topk=int(postprocess.pre_nms_topk),
                   max_detections=int(postprocess.max_detections))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> GraphNms:
        expected = ("expected conf_threshold and iou_threshold in [0, 1], class_agnostic true/false, pre_nms_topk "
                    "and max_detections >= 1")
        try:
            agnostic = data["class_agnostic"]
            if not isinstance(agnostic, bool):  # bool("false") is True: a string must not pass
                raise TypeError(f"class_agnostic is {agnostic!r}")
            nms = cls(conf_threshold=float(data["conf_threshold"]), iou_threshold=float(data["iou_threshold"]),
                      class_agnostic=agnostic, pre_nms_topk=int(data["pre_nms_topk"]),
                      max_detections=int(data["max_detections"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"{source}: graph_nms is malformed ({type(exc).__name__}: {exc}); {expected}") from None
        if not (0.0 <= nms.conf_threshold <= 1.0 and 0.0 <= nms.iou_threshold <= 1.0 and nms.pre_nms_topk >= 1
                and nms.max_detections >= 1):
            raise SpecError(f"{source}: graph_nms {nms.to_dict()}; {expected}")
        return nms

    def capped(self, max_topk: int | None) -> GraphNms:
        """This NMS with its pre-NMS top-k at most ``max_topk`` (a backend's limit; None: unchanged)."""
        if max_topk is None or self.pre_nms_topk <= max_topk:
            return self
        return replace(self, pre_nms_topk=max_topk)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"score > {self.conf_threshold:g}, IoU {self.iou_threshold:g}, "
                f"{'class-agnostic' if self.class_agnostic else 'per class'}, top-{self.pre_nms_topk}, "
                f"at most {self.max_detections} boxes")

    def admits(self, postprocess: PostprocessSpec) -> str | None:
        """None when ``postprocess`` can run on this graph's output; else why not (one line)."""
        if not postprocess.nms:
            return "NMS is in the graph; a run without NMS would need the candidates it dropped"
        if postprocess.iou_threshold != self.iou_threshold:
            return (f"NMS is in the graph at IoU {self.iou_threshold:g}; IoU {postprocess.iou_threshold:g} would need "
                    "the boxes it suppressed")
        if postprocess.conf_threshold < self.conf_threshold:
            return (f"NMS is in the graph at score threshold {self.conf_threshold:g}; a lower one "
                    f"({postprocess.conf_threshold:g}) would need the boxes it dropped")
        if postprocess.class_agnostic != self.class_agnostic:
            return (f"NMS is in the graph {'class-agnostic' if self.class_agnostic else 'per class'}; the run asks "
                    f"for {'class-agnostic' if postprocess.class_agnostic else 'per-class'} NMS")
        if postprocess.max_detections > self.max_detections or postprocess.pre_nms_topk != self.pre_nms_topk:
            return (f"NMS is in the graph with top-{self.pre_nms_topk} candidates and {self.max_detections} boxes per "
                    f"image; the run asks for top-{postprocess.pre_nms_topk} and {postprocess.max_detections}")
        return None


def graph_nms_spec(spec: ModelSpec, graph_nms: GraphNms) -> ModelSpec:
    """The spec of a model whose graph ends in NMS: head :data:`HEAD_KIND` on its two outputs, host NMS off
    (the score filter, top-k and max-detections still run on the host and keep the graph's boxes as they are)."""
    head = HeadSpec(kind=HEAD_KIND, output_names=(DETECTIONS_OUTPUT, BATCH_OUTPUT), params=graph_nms.to_dict())
    postprocess = replace(spec.postprocess, conf_threshold=graph_nms.conf_threshold,
                          iou_threshold=graph_nms.iou_threshold, class_agnostic=graph_nms.class_agnostic,
                          pre_nms_topk=graph_nms.pre_nms_topk, max_detections=graph_nms.max_detections)
    return replace(spec, head=head, postprocess=postprocess)


def host_postprocess(graph_nms: GraphNms, requested: PostprocessSpec, where: str) -> PostprocessSpec:
    """What the host runs after a graph-NMS model, for the user's ``requested`` post-processing: the requested
    score threshold and detections, NMS off. InputError (one line naming ``where``) when the graph cannot
    serve the request (:meth:`GraphNms.admits`)."""
    why = graph_nms.admits(requested)
    if why is not None:
        raise InputError(f"{where}: {why}; use a model converted with nms = \"host\" for that")
    return replace(requested, nms=False)
