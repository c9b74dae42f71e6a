"""Calibration's observation run: the fp32 graph with each observed tensor's per-image summary computed inside it.

Returning the ~150 observed activations as graph outputs (60 MB per image at 640 px) and reducing them in numpy made
the engine run unfused and unoptimised (every tensor must exist in memory, in plain layout) and then read every value
twice more. Here the summaries are nodes appended to the graph, so the engine keeps its optimised graph and returns,
per image, a few small vectors (float32, 1-D, the observed tensors in ``names`` order):

- ``minimum`` / ``maximum`` [N]: each tensor's min and max over the image (the range observers' input);
- ``channel_means`` [Σ C]: for each tensor in ``mean_names``, its mean over every axis but 1 (bias correction's
  ``E[x]`` per input channel of a layer); a mean propagates a NaN, which ReduceMin / ReduceMax may skip;
- ``channel_counts`` [len(mean_names)]: how many channels each of those means has (int64);
- ``output_sums`` [float outputs]: each float model output's sum, for the same reason;
- ``samples`` [Σ S] and ``sample_sizes`` [N] (histogram methods only): a fixed-stride sample of each tensor for the
  clipping observers' histograms, ``SAMPLE_TARGET`` values or fewer per tensor and image. A rank-4 tensor
  ``[B, C, H, W]`` is sampled on a spatial grid, ``x[:, :, ::s, ::s]`` with ``s = max(1, ceil(sqrt(B·C·H·W /
  SAMPLE_TARGET)))`` (every channel, every ``s``-th row and column: an engine slices its blocked channel layouts
  in place, where a flat strided slice first copies the whole tensor to plain layout, measured 1.7x slower);
  any other rank flat with stride ``max(1, ceil(size / SAMPLE_TARGET))``. The stride is computed inside the graph
  from the tensor's shape, so graphs with symbolic dimensions work as they are.

The engine is OpenVINO when it is installed (the engine NNCF calibrates with: ~20 % faster than ONNX Runtime on a
yolov8n at 640 px here, see benchmarks/RESULTS.md), with its throughput hint and its optimal number of requests in
flight, results taken strictly in image order (the growing histograms and the float sums depend on the order, and a
calibration must be reproducible); else ONNX Runtime with every graph optimisation on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

#: values per tensor and image the histogram methods bin (x 300 images: ~5M samples per tensor for 2048 bins)
SAMPLE_TARGET = 1 << 14

OUTPUTS = ("minimum", "maximum", "channel_means", "channel_counts", "output_sums")
SAMPLE_OUTPUTS = ("samples", "sample_sizes")
_PREFIX = "edgekit_observe_"


@dataclass(frozen=True)
class ImageSummary:
    """One image's summaries, tensors in ``ObservationGraph.names`` order (see the module docstring)."""

    minimum: np.ndarray        # float32 [N]
    maximum: np.ndarray        # float32 [N]
    channel_means: np.ndarray  # float32 [Σ C of mean_names]
    channel_counts: np.ndarray  # int64 [len(mean_names)]
    output_sums: np.ndarray    # float32 [graph outputs]
    samples: np.ndarray | None = None       # float32 [Σ S]
    sample_sizes: np.ndarray | None = None  # int64 [N]


@dataclass(frozen=True)
class ObservationGraph:
    """The fp32 model with the summary nodes appended; ``model`` has only the summary vectors as outputs."""

    model: onnx.ModelProto
    input_name: str
    names: tuple[str, ...]
    mean_names: tuple[str, ...]
    output_names: tuple[str, ...]  # the model outputs ``output_sums`` sums, in its order
    histogram: bool


def observation_graph(model: onnx.ModelProto, names: Iterable[str], mean_names: Iterable[str],
                      histogram: bool) -> ObservationGraph:
    """Append the summaries of ``names`` (and channel means of ``mean_names``, a subset) to a copy of ``model``."""
    names, mean_names = tuple(names), tuple(mean_names)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    graph_model = onnx.ModelProto()
    graph_model.CopyFrom(model)
    graph = graph_model.graph
    nodes: list[onnx.NodeProto] = []
    constants: dict[str, np.ndarray] = {}

    def constant(key: str, value: np.ndarray) -> str:
        name = f"{_PREFIX}const_{key}"
        if name not in constants:
            constants[name] = value
            graph.initializer.append(onnx.numpy_helper.from_array(value, name))
        return name

    def node(op: str, inputs: list[str], output: str, **attributes) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def reduce(op: str, tensor: str, output: str, axes: list[int] | None) -> str:
        # ReduceX over every axis when ``axes`` is None; opset 18 moved ``axes`` from an attribute to an input
        if axes is None:
            return node(op, [tensor], output, keepdims=0)
        if opset >= 18:  # (ReduceSum moved at 13, but is only ever used here over every axis)
            return node(op, [tensor, constant(f"axes_{'_'.join(map(str, axes))}", np.array(axes, np.int64))], output,
                        keepdims=0)
        return node(op, [tensor], output, keepdims=0, axes=axes)

    one = constant("one", np.array([1], np.int64))
    ranks = _ranks(model, names)
    minima, maxima, means, channel_counts, samples, sample_sizes = [], [], [], [], [], []
    for index, name in enumerate(names):
        tag = f"{_PREFIX}{index}"
        minima.append(node("Reshape", [reduce("ReduceMin", name, f"{tag}_min", None), one], f"{tag}_min1"))
        maxima.append(node("Reshape", [reduce("ReduceMax", name, f"{tag}_max", None), one], f"{tag}_max1"))
        if name in mean_names:
            axes = [axis for axis in range(ranks[name]) if axis != 1]
            means.append(reduce("ReduceMean", name, f"{tag}_mean", axes))
            channel_counts.append(node("Shape", [means[-1]], f"{tag}_channels"))
        if histogram:
            sample = _sample(name, ranks[name], tag, node, constant)
            samples.append(sample)
            sample_sizes.append(node("Shape", [sample], f"{tag}_sample_size"))
    float_outputs = _float_outputs(model)
    sums = [node("Reshape", [reduce("ReduceSum", output, f"{_PREFIX}out{i}_sum", None), one], f"{_PREFIX}out{i}_sum1")
            for i, output in enumerate(float_outputs)]
    vectors = {"minimum": minima, "maximum": maxima, "channel_means": means, "channel_counts": channel_counts,
               "output_sums": sums}
    if histogram:
        vectors |= {"samples": samples, "sample_sizes": sample_sizes}
    del graph.output[:]
    for key, parts in vectors.items():
        output = f"{_PREFIX}{key}"
        counts = key in ("channel_counts", "sample_sizes")
        if parts:
            node("Concat", parts, output, axis=0)
        else:  # e.g. no layer input to average: an empty vector keeps the outputs fixed
            empty = np.zeros(0, np.int64 if counts else np.float32)
            node("Identity", [constant(f"empty_{empty.dtype}", empty)], output)
        dtype = TensorProto.INT64 if counts else TensorProto.FLOAT
        graph.output.append(helper.make_tensor_value_info(output, dtype, [f"{key}_size"]))
    graph.node.extend(nodes)
    return ObservationGraph(model=graph_model, input_name=model.graph.input[0].name, names=names,
                            mean_names=tuple(n for n in names if n in mean_names), output_names=float_outputs,
                            histogram=histogram)


def _float_outputs(model: onnx.ModelProto) -> tuple[str, ...]:
    """The model's float32 outputs (an integer or boolean output, e.g. class indices, has no NaN to carry)."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {info.name: info.type.tensor_type.elem_type for info in inferred.output}
    return tuple(o.name for o in model.graph.output if types.get(o.name, TensorProto.FLOAT) == TensorProto.FLOAT)


def _ranks(model: onnx.ModelProto, names: tuple[str, ...]) -> dict[str, int]:
    """Each observed tensor's rank (shape inference; the network input's rank where inference has none)."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    infos = {info.name: info for info in (*inferred.input, *inferred.value_info, *inferred.output)}
    ranks = {}
    for name in names:
        tensor_type = infos[name].type.tensor_type if name in infos else None
        ranks[name] = len(tensor_type.shape.dim) if tensor_type is not None and tensor_type.HasField("shape") else 4
    return ranks


def _sample(name: str, rank: int, tag: str, node, constant) -> str:
    """The nodes of ``name``'s fixed-stride sample (see the module docstring), flattened to 1-D."""
    size = node("Cast", [node("ReduceProd", [node("Shape", [name], f"{tag}_shape")], f"{tag}_size", keepdims=1)],
                f"{tag}_size_f", to=TensorProto.FLOAT)
    per_sample = node("Div", [size, constant("target", np.array([SAMPLE_TARGET], np.float32))], f"{tag}_ratio")
    if rank == 4:
        per_sample = node("Sqrt", [per_sample], f"{tag}_root")
    # Max before the Cast: Max takes int64 only from opset 12
    stride = node("Cast", [node("Max", [node("Ceil", [per_sample], f"{tag}_ceil"),
                                        constant("one_f", np.array([1.0], np.float32))], f"{tag}_stride_f")],
                  f"{tag}_stride", to=TensorProto.INT64)
    big = constant("end", np.array([np.iinfo(np.int64).max], np.int64))
    zero = constant("zero", np.array([0], np.int64))
    if rank == 4:
        steps = node("Concat", [stride, stride], f"{tag}_steps", axis=0)
        sliced = node("Slice", [name, constant("zero2", np.zeros(2, np.int64)),
                                constant("end2", np.full(2, np.iinfo(np.int64).max, np.int64)),
                                constant("axes23", np.array([2, 3], np.int64)), steps], f"{tag}_grid")
        return node("Reshape", [sliced, constant("flat", np.array([-1], np.int64))], f"{tag}_sample")
    flat = node("Reshape", [name, constant("flat", np.array([-1], np.int64))], f"{tag}_flat")
    return node("Slice", [flat, zero, big, zero, stride], f"{tag}_sample")


ENGINES = ("openvino", "onnxruntime")


def fastest_engine() -> str:
    """OpenVINO when it imports, else ONNX Runtime (see the module docstring)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "onnxruntime"
    return "openvino"


class ObservationRun:
    """Runs an ObservationGraph image by image on ``engine`` (one of ENGINES; default ``fastest_engine()``)."""

    def __init__(self, observation: ObservationGraph, engine: str | None = None):
        if engine is not None and engine not in ENGINES:
            raise ValueError(f"observation engine {engine!r}: expected one of {', '.join(ENGINES)}")
        self.observation = observation
        self._outputs = OUTPUTS + (SAMPLE_OUTPUTS if observation.histogram else ())
        self.engine = engine or fastest_engine()
        if self.engine == "openvino":
            try:
                self._run = self._openvino()
            except RuntimeError:
                if engine is not None:
                    raise
                # an operator OpenVINO does not read: the graph is ONNX Runtime's (it checks every export)
                self.engine = "onnxruntime"
        if self.engine == "onnxruntime":
            self._run = self._onnxruntime()

    def summaries(self, tensors: Iterable[np.ndarray]) -> Iterator[ImageSummary]:
        """One ImageSummary per tensor (float32 [1, 3, H, W]), in the order given."""
        return self._run(tensors)

    def _summary(self, values: list[np.ndarray]) -> ImageSummary:
        return ImageSummary(**{key: np.array(value) for key, value in zip(self._outputs, values)})

    def _onnxruntime(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(self.observation.model.SerializeToString(), sess_options=options,
                                       providers=["CPUExecutionProvider"])
        output_names = [f"{_PREFIX}{key}" for key in self._outputs]

        def run(tensors: Iterable[np.ndarray]) -> Iterator[ImageSummary]:
            for tensor in tensors:
                yield self._summary(session.run(output_names, {self.observation.input_name: tensor}))
        return run

    def _openvino(self):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(self.observation.model.SerializeToString(), b"")
        # f32 explicitly: on CPUs with bf16 / AMX units OpenVINO's default precision would observe bf16 activations
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                     "PERFORMANCE_HINT": "THROUGHPUT"})
        requests = [compiled.create_infer_request()
                    for _ in range(max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))))]
        ports = [compiled.output(f"{_PREFIX}{key}") for key in self._outputs]

        def run(tensors: Iterable[np.ndarray]) -> Iterator[ImageSummary]:
            # a ring of requests: image i runs on request i % n, and its results are read (in order) before
            # image i + n is started on the same request, so n images are in flight while Python reads one
            in_flight: deque = deque()
            try:
                for index, tensor in enumerate(tensors):
                    if len(in_flight) == len(requests):
                        yield self._finish(in_flight.popleft(), ports)
                    request = requests[index % len(requests)]
                    request.start_async({0: tensor})
                    in_flight.append(request)
                while in_flight:
                    yield self._finish(in_flight.popleft(), ports)
            finally:
                for request in in_flight:  # an abandoned run (an error, a closed generator) leaves nothing running
                    request.wait()
        return run

    def _finish(self, request, ports) -> ImageSummary:
        request.wait()
        return self._summary([request.get_tensor(port).data for port in ports])


def split(vector: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
    """``vector`` cut into consecutive pieces of ``sizes`` (a concatenated summary back into one array per tensor)."""
    return np.split(vector, np.cumsum(sizes)[:-1]) if len(sizes) else []
