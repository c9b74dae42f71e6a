"""Calibration's observation run: the fp32 graph with each observed tensor's per-image summary computed inside it.

Returning the ~150 observed activations as graph outputs (60 MB per image at 640 px) and reducing them in numpy made
the engine run unfused and unoptimised (every tensor must exist in memory, in plain layout) and then read every value
twice more. Here the summaries are nodes appended to the graph, so the engine keeps its optimised graph and returns,
per image, a few small 1-D vectors (float32 unless said; the observed tensors in ``names`` order):

- ``minimum`` / ``maximum`` [N]: each tensor's min and max over the image (the range observers' input);
- ``channel_means`` [Σ C] and ``channel_counts`` [len(mean_names)] (int64): for each tensor of ``mean_names``, its
  mean over every axis but 1 (bias correction's ``E[x]`` per input channel of a layer) and how many channels it has;
- ``finite_checks`` [len(check_names)]: the sum of every other observed tensor. ReduceMin / ReduceMax skip a NaN
  (both engines: measured), a mean or a sum does not, so every observed tensor has one summary that is NaN or
  infinite when the tensor holds a NaN or an infinity (a sum can also overflow, for values near 1e38 / size: a
  tensor no int8 range represents either);
- ``output_sums`` [len(output_names)]: each float model output's sum, the same check for the outputs;
- ``samples`` [Σ S] and ``sample_sizes`` [N] (int64; histogram methods only): a fixed-stride sample of each tensor
  for the clipping observers' histograms, about ``SAMPLE_TARGET`` values per tensor and image (``sample_strides``).

An output with nothing to report (no tensor to average, no float output) is not in the graph; its vector is empty.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgekit.errors import CalibrationError

#: values per tensor and image the histogram methods bin (x 300 images: ~5M samples per tensor for 2048 bins)
SAMPLE_TARGET = 1 << 14

SUMMARY_KEYS = ("minimum", "maximum", "channel_means", "channel_counts", "finite_checks", "output_sums")
SAMPLE_KEYS = ("samples", "sample_sizes")
COUNT_KEYS = ("channel_counts", "sample_sizes")  # int64 vectors
#: every node, initializer and output the observation adds is named with this prefix
PREFIX = "edgekit_observe_"

ENGINES = ("openvino", "onnxruntime")


@dataclass(frozen=True)
class ImageSummary:
    """One image's summaries (see the module docstring for each vector's shape and dtype)."""

    minimum: np.ndarray
    maximum: np.ndarray
    channel_means: np.ndarray
    channel_counts: np.ndarray
    finite_checks: np.ndarray
    output_sums: np.ndarray
    samples: np.ndarray | None = None
    sample_sizes: np.ndarray | None = None


@dataclass(frozen=True)
class ObservationGraph:
    """The fp32 model, its input fixed to ``input_shape``, with only the summary vectors as outputs."""

    model: onnx.ModelProto
    input_name: str
    input_shape: tuple[int, ...]
    names: tuple[str, ...]          # the observed tensors: minimum, maximum and samples follow this order
    mean_names: tuple[str, ...]     # the tensors with channel means, in ``names`` order
    check_names: tuple[str, ...]    # the tensors with a finite check (the others), in ``names`` order
    output_names: tuple[str, ...]   # the float model outputs ``output_sums`` sums, in the model's order
    histogram: bool
    keys: tuple[str, ...]  # the summary vectors that are graph outputs (the rest are empty)


def observation_graph(model: onnx.ModelProto, names: Iterable[str], mean_names: Iterable[str], histogram: bool,
                      input_shape: Sequence[int]) -> ObservationGraph:
    """Append the summaries of ``names`` to a copy of ``model`` whose input is fixed to ``input_shape`` (the
    calibration tensors' [1, 3, H, W]: static shapes let every tensor's sample strides be chosen here, and
    OpenVINO compiles a static graph). ``mean_names``: the tensors (among ``names``) whose channel means to take."""
    names, means_wanted = tuple(names), set(mean_names)
    clashing = next((name for name in names if name.startswith(PREFIX)), None)
    if clashing is not None:  # a user's graph: one error line, not a traceback
        raise CalibrationError(f"calibration: tensor {clashing!r} starts with {PREFIX!r}, the prefix calibration "
                               f"names its own nodes with; rename the tensor in the ONNX file")
    graph_model = onnx.ModelProto()
    graph_model.CopyFrom(model)
    graph = graph_model.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    del dims[:]
    for size in input_shape:
        dims.add().dim_value = int(size)
    shapes = _shapes(graph_model)
    builder = _Builder(graph, next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17))
    one = builder.constant("one", np.array([1], np.int64))
    vectors: dict[str, list[str]] = {key: [] for key in SUMMARY_KEYS + (SAMPLE_KEYS if histogram else ())}
    mean_names_in_order, check_names = [], []
    for index, name in enumerate(names):
        tag = f"{PREFIX}{index}"
        vectors["minimum"].append(builder.node("Reshape", [builder.reduce("ReduceMin", name, f"{tag}_min"), one],
                                               f"{tag}_min1"))
        vectors["maximum"].append(builder.node("Reshape", [builder.reduce("ReduceMax", name, f"{tag}_max"), one],
                                               f"{tag}_max1"))
        if name in means_wanted:
            mean = builder.channel_mean(name, shapes.get(name), tag)
            vectors["channel_means"].append(mean)
            vectors["channel_counts"].append(builder.node("Shape", [mean], f"{tag}_channels"))
            mean_names_in_order.append(name)
        else:
            vectors["finite_checks"].append(builder.node("Reshape", [builder.reduce("ReduceSum", name, f"{tag}_sum"),
                                                                     one], f"{tag}_sum1"))
            check_names.append(name)
        if histogram:
            sample = builder.sample(name, shapes.get(name), tag)
            vectors["samples"].append(sample)
            vectors["sample_sizes"].append(builder.node("Shape", [sample], f"{tag}_sample_size"))
    output_names = tuple(o.name for o in model.graph.output
                         if shapes.get(o.name, (TensorProto.FLOAT, None))[0] == TensorProto.FLOAT)
    for index, output in enumerate(output_names):
        vectors["output_sums"].append(builder.node("Reshape", [builder.reduce("ReduceSum", output, f"{PREFIX}out{index}"),
                                                               one], f"{PREFIX}out{index}_1"))
    del graph.output[:]
    keys = []
    for key, parts in vectors.items():
        if parts:  # an empty vector is made in Python: OpenVINO returns an empty constant as a 0-d tensor
            builder.node("Concat", parts, f"{PREFIX}{key}", axis=0)
            dtype = TensorProto.INT64 if key in COUNT_KEYS else TensorProto.FLOAT
            graph.output.append(helper.make_tensor_value_info(f"{PREFIX}{key}", dtype, [f"{key}_size"]))
            keys.append(key)
    graph.node.extend(builder.nodes)
    return ObservationGraph(model=graph_model, input_name=graph.input[0].name, input_shape=tuple(input_shape),
                            names=names, mean_names=tuple(mean_names_in_order), check_names=tuple(check_names),
                            output_names=output_names, histogram=histogram, keys=tuple(keys))


#: a tensor's element type and dimensions (None: unknown rank; a None inside: an unknown dimension)
Shape = tuple[int, "tuple[int | None, ...] | None"]


def _shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Every tensor's element type and dimensions by ONNX shape inference (one run for every use here)."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes: dict[str, Shape] = {}
    for info in (*inferred.input, *inferred.value_info, *inferred.output):
        tensor_type = info.type.tensor_type
        dims = (tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
                if tensor_type.HasField("shape") else None)
        shapes[info.name] = (tensor_type.elem_type, dims)
    return shapes


def sample_strides(dims: Sequence[int]) -> tuple[int, int]:
    """Row and column strides of the grid sample of a [B, C, H, W] tensor: about SAMPLE_TARGET values, every channel.

    With ``m = SAMPLE_TARGET / (B·C)`` values per plane and ``r = H·W / m`` pixels per value, the grid is square
    (``s = ceil(sqrt(r))`` both ways) unless a side is shorter than ``sqrt(r)`` — a [1, 16, 4, 8400] DFL input —
    where every row (column) is taken and the other axis strides ``ceil(r)``. Each stride is then made odd, so the
    grid does not lock onto the even periods of strided convolutions and pixel shuffles, and the grid starts at
    ``(s - 1) // 2`` so its points sit in the middle of their cells (a grid from 0 oversamples the top and left
    borders: at stride 5 on 20 x 20, 44 % of the points on them against 19 % of the pixels).
    """
    batch, channels, height, width = dims
    per_plane = max(1.0, SAMPLE_TARGET / (batch * channels))
    ratio = height * width / per_plane
    if ratio <= 1:
        rows = columns = 1
    elif math.sqrt(ratio) > height:
        rows, columns = 1, math.ceil(ratio)
    elif math.sqrt(ratio) > width:
        rows, columns = math.ceil(ratio), 1
    else:
        rows = columns = math.ceil(math.sqrt(ratio))
    return rows | 1, columns | 1


class _Builder:
    """Appends nodes and initializers (named with PREFIX) to ``graph``, for the model's default-domain ``opset``."""

    def __init__(self, graph: onnx.GraphProto, opset: int):
        self.graph, self.opset = graph, opset
        self.nodes: list[onnx.NodeProto] = []
        self._constants: set[str] = set()

    def constant(self, key: str, value: np.ndarray) -> str:
        name = f"{PREFIX}const_{key}"
        if name not in self._constants:
            self._constants.add(name)
            self.graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def reduce(self, op: str, tensor: str, output: str, axes: list[int] | None = None) -> str:
        """ReduceX over every axis (``axes`` None) or ``axes``; opset 18 moved ReduceMean's axes to an input (the
        other reductions are only taken over every axis here)."""
        if axes is None:
            return self.node(op, [tensor], output, keepdims=0)
        if self.opset >= 18:
            axes_name = self.constant(f"axes_{'_'.join(map(str, axes))}", np.array(axes, np.int64))
            return self.node(op, [tensor, axes_name], output, keepdims=0)
        return self.node(op, [tensor], output, keepdims=0, axes=axes)

    def channel_mean(self, name: str, shape: Shape | None, tag: str) -> str:
        """[C]: the mean over every axis but 1; a tensor of unknown rank is first reshaped to [B, C, rest]."""
        dims = shape[1] if shape else None
        if dims is not None:
            return self.reduce("ReduceMean", name, f"{tag}_mean", [axis for axis in range(len(dims)) if axis != 1])
        folded = self.node("Reshape", [name, self.constant("fold", np.array([0, 0, -1], np.int64))], f"{tag}_fold")
        return self.reduce("ReduceMean", folded, f"{tag}_mean", [0, 2])

    def sample(self, name: str, shape: Shape | None, tag: str) -> str:
        """The tensor's fixed-stride sample, flattened to 1-D.

        A [B, C, H, W] tensor of known size: the grid ``x[:, :, h0::sh, w0::sw]`` of ``sample_strides`` (an engine
        slices its blocked channel layouts in place, where a flat strided slice first copies the whole tensor to
        plain layout: measured 1.7x slower on OpenVINO). Any other tensor: flat, the odd stride
        ``2·floor(k / 2) + 1`` with ``k = ceil(size / SAMPLE_TARGET)``, from ``floor(k / 2)``, computed in the graph.
        """
        dims = shape[1] if shape else None
        flat_shape = self.constant("flat", np.array([-1], np.int64))
        if dims is not None and len(dims) == 4 and all(d is not None for d in dims):
            rows, columns = sample_strides([int(d) for d in dims if d is not None])
            grid = self.node("Slice", [name, self.constant(f"start_{rows}_{columns}",
                                                           np.array([(rows - 1) // 2, (columns - 1) // 2], np.int64)),
                                       self.constant(f"end_{dims[2]}_{dims[3]}", np.array(dims[2:], np.int64)),
                                       self.constant("axes_hw", np.array([2, 3], np.int64)),
                                       self.constant(f"steps_{rows}_{columns}", np.array([rows, columns], np.int64))],
                             f"{tag}_grid")
            return self.node("Reshape", [grid, flat_shape], f"{tag}_sample")
        flat = self.node("Reshape", [name, flat_shape], f"{tag}_flat")
        size = self.node("Cast", [self.node("Shape", [flat], f"{tag}_size")], f"{tag}_size_f", to=TensorProto.FLOAT)
        per_value = self.node("Ceil", [self.node("Div", [size, self.constant("target", np.array([SAMPLE_TARGET],
                                                                                                  np.float32))],
                                                 f"{tag}_ratio")], f"{tag}_per_value")
        half = self.node("Floor", [self.node("Div", [per_value, self.constant("two", np.array([2.0], np.float32))],
                                             f"{tag}_halved")], f"{tag}_half")
        # the stride 2·half + 1 (odd, >= per_value) and the start half: Max / Mod take int64 only from opset 12 / 10,
        # so the arithmetic stays in float until the Cast
        stride = self.node("Cast", [self.node("Add", [self.node("Add", [half, half], f"{tag}_twice"),
                                                      self.constant("one_f", np.array([1.0], np.float32))],
                                              f"{tag}_stride_f")], f"{tag}_stride", to=TensorProto.INT64)
        start = self.node("Cast", [half], f"{tag}_start", to=TensorProto.INT64)
        end = self.constant("end", np.array([np.iinfo(np.int64).max], np.int64))
        return self.node("Slice", [flat, start, end, self.constant("axis0", np.array([0], np.int64)), stride],
                         f"{tag}_sample")


def default_engine() -> str:
    """OpenVINO when it imports (the engine NNCF calibrates with, and the faster one here: benchmarks/RESULTS.md),
    else ONNX Runtime."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "onnxruntime"
    return "openvino"


class ObservationRun:
    """Runs an ObservationGraph image by image on ``engine`` (one of ENGINES; default ``default_engine()``).

    OpenVINO: its throughput hint and a ring of ``requests`` infer requests (default: its optimal number), results
    read strictly in image order (the growing histograms and the float sums depend on the order, and a calibration
    must be reproducible). ONNX Runtime: one session, every graph optimisation on. When the default engine is
    OpenVINO and it cannot compile the graph (an operator it does not read), ONNX Runtime runs it — ONNX Runtime
    checked the export — and ``fallback`` says why.
    """

    def __init__(self, observation: ObservationGraph, engine: str | None = None, requests: int | None = None) -> None:
        if engine is not None and engine not in ENGINES:
            raise ValueError(f"observation engine {engine!r}: expected one of {', '.join(ENGINES)}")
        self.observation = observation
        self.engine = engine or default_engine()
        self.fallback = ""
        self._run: Callable[[Iterable[np.ndarray]], Generator[ImageSummary, None, None]]
        if self.engine == "openvino":
            try:
                self._run = self._openvino(requests)
            except RuntimeError as exc:
                if engine is not None:
                    raise
                self.fallback = f"OpenVINO could not compile the observation graph ({str(exc).splitlines()[0]})"
                self.engine = "onnxruntime"
        if self.engine == "onnxruntime":
            self._run = self._onnxruntime()

    def summaries(self, tensors: Iterable[np.ndarray]) -> Generator[ImageSummary, None, None]:
        """One ImageSummary per tensor (float32, ``observation.input_shape``), in the order given."""
        return self._run(tensors)

    def _summary(self, values: Sequence[np.ndarray]) -> ImageSummary:
        present = dict(zip(self.observation.keys, values))
        keys = SUMMARY_KEYS + (SAMPLE_KEYS if self.observation.histogram else ())
        return ImageSummary(**{key: np.array(present[key]) if key in present
                               else np.zeros(0, np.int64 if key in COUNT_KEYS else np.float32) for key in keys})

    def _onnxruntime(self) -> Callable[[Iterable[np.ndarray]], Generator[ImageSummary, None, None]]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(self.observation.model.SerializeToString(), sess_options=options,
                                       providers=["CPUExecutionProvider"])
        output_names = [f"{PREFIX}{key}" for key in self.observation.keys]

        def run(tensors: Iterable[np.ndarray]) -> Generator[ImageSummary, None, None]:
            for tensor in tensors:
                yield self._summary(session.run(output_names, {self.observation.input_name: tensor}))
        return run

    def _openvino(self, requests: int | None) -> Callable[[Iterable[np.ndarray]], Generator[ImageSummary, None, None]]:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(self.observation.model.SerializeToString(), b"")
        # f32 explicitly: on CPUs with bf16 / AMX units OpenVINO's default precision would observe bf16 activations
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                     "PERFORMANCE_HINT": "THROUGHPUT"})
        count = requests or max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        ring = [compiled.create_infer_request() for _ in range(count)]
        ports = [compiled.output(f"{PREFIX}{key}") for key in self.observation.keys]

        def finish(request: ov.InferRequest) -> ImageSummary:
            request.wait()
            return self._summary([request.get_tensor(port).data for port in ports])

        def run(tensors: Iterable[np.ndarray]) -> Generator[ImageSummary, None, None]:
            # image i runs on request i % n, and its results are read (in order) before image i + n is started on
            # the same request, so n images are in flight while Python reads one
            in_flight: deque = deque()
            try:
                for index, tensor in enumerate(tensors):
                    if len(in_flight) == len(ring):
                        yield finish(in_flight.popleft())
                    request = ring[index % len(ring)]
                    request.start_async({0: tensor})
                    in_flight.append(request)
                while in_flight:
                    yield finish(in_flight.popleft())
            finally:
                for request in in_flight:  # an abandoned run (an error, a closed generator) leaves nothing running
                    request.wait()
        return run


def split(vector: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """A concatenated summary back into one array per tensor: ``vector`` [Σ sizes] cut into consecutive pieces of
    ``sizes`` (int64 [K]); K pieces, views of ``vector``."""
    return np.split(vector, np.cumsum(sizes)[:-1]) if len(sizes) else []
