"""ModelSpec for an ONNX file exported by someone else (numpy + onnx / onnxruntime only, no torch).

What the file says is used; nothing in it is executed. Recognised exports, all with one image input
``[B, 3, H, W]`` and one output:

- **Ultralytics 8.x** (``YOLO(...).export(format="onnx")``): Ultralytics writes its metadata into
  ``metadata_props`` as strings: ``names`` (a Python dict literal ``"{0: 'person', ...}"``),
  ``stride``, ``imgsz`` (``"[320, 320]"``), ``task``, ``batch``, ``end2end`` (``"True"``/``"False"``,
  newer versions), ``author`` (``"Ultralytics"``) … Output ``[B, 4+nc, N]`` -> head kind
  ``ultralytics_decoded``; ``[B, K, 6]`` of an end-to-end export -> ``e2e_xyxy`` (no NMS). A
  ``task`` other than ``detect`` is refused. Preprocessing: RGB, /255, centred letterbox pad 114;
  postprocess: conf 0.25, IoU 0.7, 30000 candidates into NMS, 300 detections (Ultralytics' predict).
- **No metadata**, output ``[B, N, 5+nc]`` with N = the cell count of strides 8/16/32 (YOLOX, one
  candidate per cell) or three times it (classic YOLOv5, three anchors per cell): the layout alone
  cannot tell YOLOv5 from YOLOX, so ``family`` must be given (``yolov5`` or ``yolox``):

  * ``yolov5``: head ``yolo_decoded``; RGB, /255, centred letterbox pad 114; conf 0.25, IoU 0.45,
    1000 detections (YOLOv5's detect.py).
  * ``yolox``: the official ``tools/export_onnx.py`` leaves the box decode out unless
    ``--decode_in_inference`` is given (head ``yolox_flat``, strides 8/16/32); with it the graph
    ends in the ``exp`` of the box decode and the head is ``yolo_decoded``. The graph is read for an
    ``Exp`` node to tell the two apart (YOLOX's backbone and head have none). Preprocessing as
    YOLOX's own ``preproc``: BGR, no /255 (scale 1), letterbox pad 114 at the top-left corner.

Class names: Ultralytics' ``names``; otherwise ``class_names`` (e.g. ``--names FILE``), else
``class0`` … ``class{nc-1}``.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

from edgekit.errors import ModelFileError, SpecError, first_line
from edgekit.spec import ONNX_METADATA_KEY, HeadSpec, ModelSpec, Normalization, PostprocessSpec, ResizeSpec

#: ``family`` values for ONNX files without metadata
THIRD_PARTY_FAMILIES = ("ultralytics", "yolov5", "yolox")
#: the strides of YOLOv5 / YOLOX P3-P5 heads, used to recognise the candidate count N
GRID_STRIDES = (8, 16, 32)
#: longest metadata string read as a literal (Ultralytics' names for 80 classes are ~1.3 kB)
_MAX_LITERAL_CHARS = 1_000_000

@dataclass(frozen=True)
class OnnxHeader:
    """What an ONNX file declares, without its weights being used.

    inputs / outputs: (name, shape) in graph order; a shape lists ints for fixed dims and a str
    (the dim's parameter name) or None for dynamic ones. metadata: ``metadata_props``.
    op_types: the operator types in the main graph, or None when only onnxruntime could read the file.
    """

    inputs: tuple[tuple[str, tuple], ...]
    outputs: tuple[tuple[str, tuple], ...]
    metadata: dict[str, str]
    op_types: frozenset[str] | None


def read_onnx_header(path: str | Path) -> OnnxHeader:
    """Read inputs, outputs, metadata and operator types of an ONNX file (onnx, else onnxruntime)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: ONNX model file not found")
    if path.stat().st_size == 0:  # onnx parses 0 bytes as an empty graph; say what is really wrong
        raise ModelFileError(f"{path}: file is empty (0 bytes); expected an ONNX model")
    try:
        import onnx
    except ImportError:
        pass  # onnx is a converter-side package: onnxruntime reads the header below
    else:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:
            raise ModelFileError(f"{path}: not a loadable ONNX model ({first_line(exc)})") from None
        initializers = {t.name for t in model.graph.initializer}

        def shape_of(value) -> tuple:
            dims = value.type.tensor_type.shape.dim
            return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)

        return OnnxHeader(
            inputs=tuple((v.name, shape_of(v)) for v in model.graph.input if v.name not in initializers),
            outputs=tuple((v.name, shape_of(v)) for v in model.graph.output),
            metadata={p.key: p.value for p in model.metadata_props},
            op_types=frozenset(node.op_type for node in model.graph.node))
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelFileError(f"{path}: not a loadable ONNX model ({first_line(exc)})") from None

    def ort_shape(shape) -> tuple:
        return tuple(d if isinstance(d, int) else (d or None) for d in shape)

    return OnnxHeader(inputs=tuple((i.name, ort_shape(i.shape)) for i in session.get_inputs()),
                      outputs=tuple((o.name, ort_shape(o.shape)) for o in session.get_outputs()),
                      metadata=dict(session.get_modelmeta().custom_metadata_map), op_types=None)


def has_edgekit_spec(header: OnnxHeader) -> bool:
    """True for a file exported by edgekit (its ModelSpec is embedded in the metadata)."""
    return ONNX_METADATA_KEY in header.metadata


def is_ultralytics(metadata: dict[str, str]) -> bool:
    """Ultralytics' exporter writes ``author: Ultralytics``; older versions at least names, stride, task."""
    return metadata.get("author") == "Ultralytics" or {"names", "stride", "task"} <= set(metadata)


def parse_ultralytics_names(text: str, source: str) -> tuple[str, ...]:
    """Class names from Ultralytics' ``names`` metadata, a dict literal ``"{0: 'person', 1: 'bicycle'}"``.

    Read with ``ast.literal_eval`` (literals only: nothing is evaluated or executed) once the text
    has the shape of a dict literal, then checked to be ``{int: str}`` with keys 0..n-1.
    """
    stripped = text.strip()
    if not (stripped.startswith("{") and stripped.endswith("}")) or len(stripped) > _MAX_LITERAL_CHARS:
        raise SpecError(f"{source}: metadata 'names' must be a dict literal {{0: 'name', ...}}, got {text[:60]!r}")
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise SpecError(f"{source}: metadata 'names' is not a literal {{index: 'name'}} dict: {text[:60]!r}") from None
    if not isinstance(value, dict) or not value or not all(
            type(k) is int and isinstance(v, str) for k, v in value.items()):
        raise SpecError(f"{source}: metadata 'names' must map class indices (int) to names (str), got {text[:60]!r}")
    if sorted(value) != list(range(len(value))):
        raise SpecError(f"{source}: metadata 'names' must have the class indices 0..{len(value) - 1}, "
                        f"got {sorted(value)[:10]}")
    return tuple(value[i] for i in range(len(value)))


def parse_imgsz(text: str, source: str) -> tuple[int, int]:
    """(H, W) from Ultralytics' ``imgsz`` metadata: ``"[320, 320]"`` or ``"640"``."""
    match = re.fullmatch(r"\s*\[?\s*(\d{1,5})\s*(?:,\s*(\d{1,5})\s*)?\]?\s*", text)
    if not match:
        raise SpecError(f"{source}: metadata 'imgsz' must be [height, width] or one integer, got {text[:40]!r}")
    h = int(match.group(1))
    w = int(match.group(2) or h)
    if h <= 0 or w <= 0:
        raise SpecError(f"{source}: metadata 'imgsz' must be positive, got {text[:40]!r}")
    return h, w


def grid_cells(input_size: tuple[int, int], strides=GRID_STRIDES) -> int:
    """Cells over the levels of ``strides`` for an input (H, W): sum of ceil(H/s) * ceil(W/s)."""
    h, w = input_size
    return sum(math.ceil(h / s) * math.ceil(w / s) for s in strides)


def spec_from_third_party_onnx(path: str | Path, family: str | None = None,
                               class_names: tuple[str, ...] | None = None,
                               input_size: tuple[int, int] | None = None,
                               header: OnnxHeader | None = None) -> ModelSpec:
    """The ModelSpec of a third-party ONNX detection export (see the module docstring).

    ``family``: ``yolov5`` or ``yolox`` for files without metadata (an Ultralytics file with
    ``family`` is an error: its metadata describes it). ``class_names``: override or
    supply the names (their count must match the output). ``input_size`` (H, W): for a file whose
    input H/W are dynamic (else it must equal the fixed size). The spec's ``input_name`` and
    ``head.output_names`` are the file's own. Raises SpecError / ModelFileError with one line.
    """
    path = Path(path)
    header = header or read_onnx_header(path)
    name = path.name
    first = header.inputs[0][1] if header.inputs else ()
    if len(header.inputs) != 1 or len(first) != 4 or (isinstance(first[1], int) and first[1] != 3):
        raise ModelFileError(f"{name}: inputs {[(n, list(s)) for n, s in header.inputs]}; expected one image "
                             "input [B, 3, H, W]")
    input_name, input_shape = header.inputs[0]
    meta = header.metadata
    ultralytics = is_ultralytics(meta)
    size = _input_size(name, input_shape, input_size, meta.get("imgsz") if ultralytics else None)
    if len(header.outputs) != 1:
        raise ModelFileError(f"{name}: outputs {[n for n, _ in header.outputs]}; edgekit reads single-output "
                             "exports (Ultralytics, YOLOv5, YOLOX) from the file alone — for per-level heads "
                             "pass --family FAMILY --names FILE of a built-in family")
    output_name, out_shape = header.outputs[0]
    if len(out_shape) != 3:
        raise ModelFileError(f"{name}: output {output_name!r} has shape {_shape_text(out_shape)}; expected "
                             "[B, 4+nc, N], [B, K, 6] or [B, N, 5+nc]; for a raw grid head pass --family FAMILY --names FILE "
                             "of a built-in family (e.g. fastestdet)")
    if ultralytics:
        return _ultralytics_spec(name, meta, family, class_names, size, input_name, output_name, out_shape)
    return _grid_spec(name, header, family, class_names, size, input_name, output_name, out_shape)


# --- Ultralytics ------------------------------------------------------------------------------------

def _ultralytics_spec(name: str, meta: dict[str, str], family: str | None, class_names: tuple[str, ...] | None,
                      size: tuple[int, int], input_name: str, output_name: str, out_shape: tuple) -> ModelSpec:
    if family is not None:
        raise SpecError(f"{name}: --family {family}: the file carries Ultralytics metadata, which describes it; "
                        "drop --family")
    task = meta.get("task", "detect")
    if task != "detect":
        raise SpecError(f"{name}: Ultralytics task {task!r}; edgekit runs detection models (task 'detect') only")
    names = parse_ultralytics_names(meta["names"], f"{name} metadata") if "names" in meta else None
    if class_names is not None:
        if names is not None and len(class_names) != len(names):
            raise SpecError(f"{name}: --names has {len(class_names)} classes, the file's metadata {len(names)}")
        names = tuple(class_names)
    end2end = meta.get("end2end", "").strip().lower() == "true"
    _, d1, d2 = out_shape
    nc = len(names) if names is not None else None
    if d2 == 6 and (end2end or ("end2end" not in meta and d1 != (nc or 0) + 4)):
        kind = "e2e_xyxy"
    elif isinstance(d1, int) and d1 > 4 and (nc is None or d1 == nc + 4) and not end2end:
        kind = "ultralytics_decoded"
        nc = d1 - 4
    elif end2end:
        # the metadata promises [B, K, 6]; a decoded [B, 4+nc, N] output then contradicts it and neither reading
        # can be trusted (decoding it as end to end or as NMS-needing boxes would be a guess)
        decoded = isinstance(d1, int) and d1 > 4 and (nc is None or d1 == nc + 4)
        found = " (the one-to-many [B, 4+nc, N] layout)" if decoded else ""
        raise SpecError(f"{name}: metadata end2end=True promises an end-to-end output [B, K, 6], but output "
                        f"{output_name!r} has shape {_shape_text(out_shape)}{found}; re-export the model or correct "
                        "the 'end2end' metadata")
    else:
        expected = f"[B, {nc + 4}, N]" if nc is not None else "[B, 4+nc, N]"
        raise SpecError(f"{name}: output {output_name!r} has shape {_shape_text(out_shape)}; with this Ultralytics "
                        f"metadata ({nc} classes) expected {expected} or, end to end, [B, K, 6]")
    if names is None:
        if nc is None:
            raise SpecError(f"{name}: the file has no 'names' metadata and an end-to-end output; pass --names FILE")
        names = tuple(f"class{i}" for i in range(nc))
    return _ultralytics_model_spec(kind, names, size, input_name, output_name)


def _ultralytics_model_spec(kind: str, names: tuple[str, ...], size: tuple[int, int], input_name: str,
                            output_name: str) -> ModelSpec:
    """Ultralytics' predict settings: square letterbox (pad 114), RGB /255, NMS IoU 0.7 unless end to end."""
    postprocess = PostprocessSpec(conf_threshold=0.25, iou_threshold=0.7, nms=kind != "e2e_xyxy",
                                  pre_nms_topk=30000, max_detections=300)
    return ModelSpec(family="ultralytics", input_size=size, class_names=names,
                     head=HeadSpec(kind=kind, output_names=(output_name,), params={}),
                     color_order="RGB", normalization=Normalization(scale=1.0 / 255.0),
                     resize=ResizeSpec(mode="letterbox", pad_value=114), postprocess=postprocess,
                     input_name=input_name)


def _decoded_without_metadata(name: str, family: str | None, class_names: tuple[str, ...] | None,
                              size: tuple[int, int], input_name: str, output_name: str,
                              out_shape: tuple) -> ModelSpec | None:
    """An Ultralytics decoded export whose metadata was stripped: [B, 4+nc, N] with N one candidate per cell of
    strides 8/16/32. Only ``--family ultralytics`` may read it so (the rows could be anything); without it a file
    of that shape gets an error asking for the flag. None when the file is not of that shape and no flag asks."""
    _, d1, d2 = out_shape
    cells = grid_cells(size)
    looks_decoded = d2 == cells and isinstance(d1, int) and 4 < d1 != cells
    if family != "ultralytics" and not (family is None and looks_decoded):
        return None
    if not looks_decoded:
        raise SpecError(f"{name}: --family ultralytics expects the decoded output [B, 4+nc, {cells}] (one candidate "
                        f"per cell of strides 8/16/32 at {size[0]}x{size[1]}), the output has {_shape_text(out_shape)}")
    nc = d1 - 4
    if family is None:
        raise SpecError(f"{name}: output {_shape_text(out_shape)} looks like an Ultralytics decoded export (4 box + "
                        f"{nc} class rows over {cells} cells) but the file has no metadata; pass --family ultralytics "
                        f"--names FILE ({nc} class names)")
    if class_names is None:
        raise SpecError(f"{name}: --family ultralytics on a file without metadata needs --names FILE ({nc} classes)")
    if len(class_names) != nc:
        raise SpecError(f"{name}: --names has {len(class_names)} classes, the output [B, {d1}, N] has {nc}")
    return _ultralytics_model_spec("ultralytics_decoded", tuple(class_names), size, input_name, output_name)


# --- YOLOv5 / YOLOX without metadata ------------------------------------------------------------------

def _grid_spec(name: str, header: OnnxHeader, family: str | None, class_names: tuple[str, ...] | None,
               size: tuple[int, int], input_name: str, output_name: str, out_shape: tuple) -> ModelSpec:
    stripped = _decoded_without_metadata(name, family, class_names, size, input_name, output_name, out_shape)
    if stripped is not None:
        return stripped
    _, n, channels = out_shape
    if not isinstance(channels, int) or channels < 6:
        raise SpecError(f"{name}: output {output_name!r} has shape {_shape_text(out_shape)} and the file has no "
                        "metadata; expected [B, N, 5+nc] (YOLOv5 / YOLOX)")
    nc = channels - 5
    cells = grid_cells(size)
    layouts = {3 * cells: "3 anchors per cell over strides 8/16/32, as classic YOLOv5",
               cells: "one candidate per cell over strides 8/16/32, as YOLOX"}
    if family is None:
        if n in layouts:
            raise SpecError(f"{name}: output [B, {n}, {channels}] has {layouts[n]}, but without metadata the layout "
                            "is ambiguous between YOLOv5, YOLOX and raw YOLOX; pass --family yolov5|yolox "
                            f"(and --names FILE with {nc} classes)")
        raise SpecError(f"{name}: output {output_name!r} has shape {_shape_text(out_shape)} and the file has no "
                        f"metadata; N={n} is not the candidate count of a {size[0]}x{size[1]} YOLOv5 ({3 * cells}) "
                        f"or YOLOX ({cells}) head")
    if family not in THIRD_PARTY_FAMILIES:
        raise SpecError(f"{name}: --family {family!r} does not describe a single-output [B, N, 5+nc] ONNX file; "
                        f"use one of {', '.join(THIRD_PARTY_FAMILIES)}")
    if class_names is not None and len(class_names) != nc:
        raise SpecError(f"{name}: --names has {len(class_names)} classes, the output [B, N, {channels}] has {nc}")
    names = tuple(class_names) if class_names is not None else tuple(f"class{i}" for i in range(nc))
    if family == "yolov5":
        return ModelSpec(family="yolov5", input_size=size, class_names=names,
                         head=HeadSpec(kind="yolo_decoded", output_names=(output_name,), params={}),
                         color_order="RGB", normalization=Normalization(scale=1.0 / 255.0),
                         resize=ResizeSpec(mode="letterbox", pad_value=114),
                         postprocess=PostprocessSpec(conf_threshold=0.25, iou_threshold=0.45, pre_nms_topk=30000,
                                                     max_detections=1000),
                         input_name=input_name)
    if isinstance(n, int) and n != cells:
        raise SpecError(f"{name}: --family yolox expects {cells} candidates (strides 8/16/32 of "
                        f"{size[0]}x{size[1]}), the output has {n}")
    decoded = header.op_types is not None and "Exp" in header.op_types
    head = (HeadSpec(kind="yolo_decoded", output_names=(output_name,), params={}) if decoded else
            HeadSpec(kind="yolox_flat", output_names=(output_name,), params={"strides": list(GRID_STRIDES)}))
    return ModelSpec(family="yolox", input_size=size, class_names=names, head=head,
                     color_order="BGR", normalization=Normalization(scale=1.0),
                     resize=_yolox_resize(),
                     postprocess=PostprocessSpec(conf_threshold=0.25, iou_threshold=0.45, pre_nms_topk=30000,
                                                 max_detections=300),
                     input_name=input_name)


def _yolox_resize() -> ResizeSpec:
    """YOLOX pads at the bottom/right (image at the top-left corner) — when this edgekit's ResizeSpec
    has ``align``; otherwise the centred letterbox (boxes still map back exactly, the input differs)."""
    if "align" in {f.name for f in fields(ResizeSpec)}:
        return ResizeSpec(mode="letterbox", pad_value=114, align="top_left")
    return ResizeSpec(mode="letterbox", pad_value=114)


# --- helpers ------------------------------------------------------------------------------------------

def _input_size(name: str, shape: tuple, requested: tuple[int, int] | None, imgsz: str | None) -> tuple[int, int]:
    h, w = shape[2], shape[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        if requested is not None and tuple(requested) != (h, w):
            raise SpecError(f"{name}: the input is fixed at {h}x{w}; --imgsz {requested[0]} does not match it")
        return h, w
    if requested is not None:
        return int(requested[0]), int(requested[1])
    if imgsz is not None:
        return parse_imgsz(imgsz, f"{name} metadata")
    raise SpecError(f"{name}: the image input has dynamic height/width {_shape_text(shape)} and no imgsz metadata; "
                    "pass --imgsz N")


def _shape_text(shape: tuple) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"
