"""ONNX -> OpenVINO IR (``.xml`` graph + ``.bin`` weights).

What each edgekit precision means here (stored weights / inference-precision hint):

============  =============  ==========================================================
precision     weights (.bin)  compute (``INFERENCE_PRECISION_HINT`` in the manifest)
============  =============  ==========================================================
fp32          f32            ``f32`` — explicit, because OpenVINO's CPU plugin otherwise
                             computes in bf16 on CPUs with native bf16 (AVX512_BF16/AMX)
bf16          f32            ``bf16`` — bf16 compute on purpose (the IR format has no bf16
                             weight compression; the plugin converts the weights at load)
fp16 (CPU)    f16            ``f32`` — fp16 here means half-size *storage*: the CPU plugin
                             decompresses the weights to f32 and computes in f32, so the only
                             error is fp16 weight rounding (~1e-3 relative), the same on every
                             CPU. An ``f16`` hint would compute in fp16 on CPUs that have it
                             (AVX512_FP16 / AMX-FP16) and in f32 elsewhere: results that
                             depend on the CPU generation.
fp16 (GPU)    f16            ``f16`` — fp16 is an Intel GPU's native compute precision
int8          i8 + f32       ``f32`` — the Q/DQ ONNX with the ``openvino`` placement (uint8
                             activations, int8 per-channel weights on every conv input;
                             see ``edgekit.quant.qdq``) becomes FakeQuantize nodes that the CPU
                             plugin runs as u8 x i8 convolutions; what stays float runs in f32
============  =============  ==========================================================

fp32 and bf16 run the same files (``openvino/model_f32.xml/.bin``; a second build reuses them),
fp16 has its own (``openvino/model_f16.xml/.bin``): the file name says how the weights are stored,
the manifest entry says how they are computed. The ``.bin`` is listed in the entry's
``companion_files`` so ``Detector.load`` verifies its sha256 along with the ``.xml``.

Builder ``options`` (a target profile's ``[backend_options]``): ``device`` ("CPU" default, "GPU" …),
``performance_hint`` ("LATENCY" / "THROUGHPUT"), ``inference_precision`` (overrides the table).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from edgekit.convert.builders import BackendBuilder, BuildSource, FileSink, ProfileOption
from edgekit.errors import ConversionError, EdgekitError
from edgekit.quant.placement import PRODUCER_SIDE_UINT8
from edgekit.runtime.artifact import ModelEntry
from edgekit.runtime.backends.openvino import normalize_precision_hint, openvino_error_text, unconverted_operators

IR_DIR = "openvino"
#: how the weights are stored for each precision (names the files)
_WEIGHT_TYPE = {"fp32": "f32", "bf16": "f32", "fp16": "f16", "int8": "int8"}
_PASSTHROUGH_OPTIONS = ("device", "performance_hint")


def inference_precision_hint(precision: str, device: str) -> str:
    """The ``INFERENCE_PRECISION_HINT`` an entry of ``precision`` runs with on ``device`` (see the module table)."""
    if precision == "fp16":
        return "f16" if device.upper().startswith("GPU") else "f32"
    return {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[precision]


class OpenVinoBuilder(BackendBuilder):
    backend = "openvino"
    precisions = ("fp32", "fp16", "bf16", "int8")
    qdq_placement = PRODUCER_SIDE_UINT8
    tools = ("openvino",)
    profile_options: ClassVar[Mapping[str, ProfileOption]] = {
        "device": ProfileOption(str, "OpenVINO device the model runs on: CPU, GPU, GPU.0, NPU, AUTO …"),
        "performance_hint": ProfileOption(str, "OpenVINO PERFORMANCE_HINT", ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")),
        "inference_precision": ProfileOption(str, "INFERENCE_PRECISION_HINT (overrides the precision's default)",
                                             ("f32", "f16", "bf16", "fp32", "fp16")),
    }

    def build(self, source: BuildSource, precision: str, sink: FileSink, options: Mapping[str, Any]) -> ModelEntry:
        """Convert ``source.onnx_path`` to IR for ``precision``; returns the manifest entry.

        Raises ConversionError naming the node and operator OpenVINO cannot convert.
        """
        self.check_precision(precision)
        device = str(options.get("device", "CPU"))
        if precision == "bf16" and not device.upper().startswith(("CPU", "AUTO")):
            raise ConversionError(f"openvino: precision bf16 runs only on the CPU plugin, not on device {device!r}; "
                                  "use fp16 for an Intel GPU")
        weights = _WEIGHT_TYPE[precision]
        xml_name = f"{IR_DIR}/model_{weights}.xml"
        bin_name = f"{IR_DIR}/model_{weights}.bin"
        xml_path, bin_path = sink(xml_name), sink(bin_name)
        # fp32 and bf16 share the f32 files; the builder is deterministic for one source, so
        # files already written in this artifact by the other precision are reused as they are.
        if precision == "int8":
            write_int8_ir(source, xml_path)
        elif not (xml_path.is_file() and bin_path.is_file()):
            write_ir(source, xml_path, compress_to_fp16=(weights == "f16"))
        entry_options: dict[str, Any] = {key: options[key] for key in _PASSTHROUGH_OPTIONS if key in options}
        hint = options.get("inference_precision", inference_precision_hint(precision, device))
        try:
            entry_options["inference_precision"] = normalize_precision_hint(hint)
        except EdgekitError as exc:
            raise ConversionError(str(exc)) from None
        entry_options["companion_files"] = [bin_name]
        return ModelEntry(self.backend, precision, xml_name, entry_options, build={"weights": weights})


def write_int8_ir(source: BuildSource, xml_path: Path) -> Path:
    """The calibration result as Q/DQ ONNX (``openvino`` placement) -> IR with FakeQuantize."""
    import tempfile
    from dataclasses import replace

    from edgekit.quant.qdq import write_qdq

    with tempfile.TemporaryDirectory(prefix="edgekit-ov-int8-") as tmp:
        qdq_path = Path(tmp) / "model_qdq.onnx"
        write_qdq(source.onnx_path, source.require_calibration("openvino"), OpenVinoBuilder.qdq_placement, qdq_path)
        return write_ir(replace(source, onnx_path=qdq_path), xml_path, compress_to_fp16=False)


def write_ir(source: BuildSource, xml_path: Path, compress_to_fp16: bool) -> Path:
    """ONNX -> ``openvino.convert_model`` -> ``openvino.save_model`` (``.bin`` beside ``xml_path``).

    The IR's output tensors are renamed to exactly the ONNX graph's output names, so the Runner's
    output names are the spec's even where OpenVINO attached extra names to a fused tensor.
    """
    import openvino as ov

    try:
        with telemetry_off():
            model = ov.convert_model(str(source.onnx_path))
    except Exception as exc:  # OpConversionFailure, GeneralFailure, RuntimeError
        raise ConversionError(describe_conversion_failure(exc, source.onnx_path)) from None
    output_names = _onnx_output_names(source.onnx_path)
    if len(output_names) != len(model.outputs):
        raise ConversionError(f"openvino: the IR has {len(model.outputs)} outputs, the ONNX graph "
                              f"{source.onnx_path.name} has {len(output_names)} ({output_names})")
    for port, name in zip(model.outputs, output_names):
        port.get_tensor().set_names({name})
    try:
        # save_model compresses to fp16 unless told otherwise: always say which.
        ov.save_model(model, str(xml_path), compress_to_fp16=compress_to_fp16)
        _rename_generated_layers(ov, xml_path)
    except Exception as exc:
        raise ConversionError(f"openvino: cannot write the IR to {xml_path} ({openvino_error_text(exc)})") from None
    return xml_path


# OpenVINO names the nodes it creates "<Type>_<instance id>", the id from a process-wide counter: the same ONNX
# converted twice in one process gave IRs that differed in ~100 layer names (not in any number), so the artifact's
# sha256 changed. Such names are renamed "<Type>_<position in topological order>", which depends on the graph only.
_GENERATED_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9]*)_\d+(_compressed)?$")


def _rename_generated_layers(ov: Any, xml_path: Path) -> None:
    """Make the written IR byte-reproducible: re-read it, rename generated layer names, write it back unchanged
    otherwise (``serialize`` adds no node, unlike ``save_model``'s fp16 compression)."""
    model = ov.Core().read_model(str(xml_path))
    renamed = 0
    for position, op in enumerate(model.get_ordered_ops()):
        match = _GENERATED_NAME.match(op.get_friendly_name())
        if match:
            op.set_friendly_name(f"{match.group(1)}_{position}{match.group(2) or ''}")
            renamed += 1
    if renamed:
        # read_model memory-maps the .bin: write beside it and rename over (the mapping keeps the old inode)
        staged_xml = xml_path.with_name(f".{xml_path.stem}.renamed.xml")
        ov.serialize(model, str(staged_xml), str(staged_xml.with_suffix(".bin")))
        del model
        os.replace(staged_xml.with_suffix(".bin"), xml_path.with_suffix(".bin"))
        os.replace(staged_xml, xml_path)


# openvino_telemetry's OptInChecker declines when one of these says "CI" (ovc initialises its telemetry with
# disable_in_ci=True); it reads nothing else from the environment.
_TELEMETRY_OFF_ENV = ("CI", "true")


@contextlib.contextmanager
def telemetry_off() -> Iterator[None]:
    """No OpenVINO telemetry for the conversions inside this block.

    ``ov.convert_model`` (openvino.tools.ovc) sends usage events to Google Analytics and writes a
    client id under ``~/intel`` unless the user opted out with ``opt_in_out --opt_out`` (a file in
    their home) or a CI variable is set; it has no argument for it. edgekit converts on the user's
    behalf and never phones home, so the variable is set for the call only and restored after it:
    the user's environment and opt-in file are left as they were.
    """
    name, value = _TELEMETRY_OFF_ENV
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def _onnx_output_names(onnx_path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return [output.name for output in graph.output]


def describe_conversion_failure(exc: BaseException, onnx_path: Path) -> str:
    """One line naming the node(s) and operator(s) OpenVINO could not convert.

    OpenVINO reports operators, not nodes ("No conversion rule found for operations:
    com.example.FancyOp" / "Conversion is failed for: Resize-17", plus "While validating ONNX node
    '<Node(Resize): out>'" naming a node by its first output); the node names come from the
    ONNX graph itself.
    """
    text = str(exc)
    missing, failed = unconverted_operators(text)
    if not (missing or failed):
        return f"openvino: cannot convert {onnx_path.name} ({openvino_error_text(exc)})"
    nodes = _onnx_nodes(onnx_path)
    parts = []
    for operator in missing:
        names = [n for n, key, _ in nodes if key == _operator_key(operator)]
        parts.append(f"{_node_list(names)} (operator {operator}): OpenVINO has no conversion rule for this operator")
    for operator in failed:
        names = [n for n, key, _ in nodes if key == _operator_key(operator)]
        # narrow to the node OpenVINO names by its first output, when it does
        outputs = re.findall(r"While validating ONNX node '<Node\([^)]*\): ([^>]*)>'", text)
        named = [n for n, key, first_output in nodes if key == _operator_key(operator) and first_output in outputs]
        reason = _failure_reason(text)
        parts.append(f"{_node_list(named or names)} (operator {operator}): conversion failed"
                     + (f": {reason}" if reason else ""))
    return "openvino: cannot convert " + "; ".join(parts)


def _operator_key(operator: str) -> tuple[str, str]:
    """OpenVINO's operator spelling -> (domain, op_type): "Resize-17" -> ("", "Resize"),
    "com.example.FancyOp" -> ("com.example", "FancyOp")."""
    operator = re.sub(r"-\d+$", "", operator)
    domain, _, op_type = operator.rpartition(".")
    return ("" if domain == "ai.onnx" else domain), op_type


def _onnx_nodes(onnx_path: Path) -> list[tuple[str, tuple[str, str], str]]:
    """(node name, (domain, op_type), first output) for every node, subgraphs included."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:
        return []
    found = []

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            domain = "" if node.domain == "ai.onnx" else node.domain
            found.append((node.name or f"<unnamed {node.op_type}>", (domain, node.op_type),
                          node.output[0] if node.output else ""))
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g)
                for sub in attribute.graphs:
                    walk(sub)

    walk(model.graph)
    return found


def _node_list(names: list[str]) -> str:
    if not names:
        return "a node"
    shown = ", ".join(repr(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return ("node " if len(names) == 1 else "nodes ") + shown


def _failure_reason(text: str) -> str:
    """The last line of OpenVINO's detail for a failed conversion: the actual reason."""
    detail = text.split("Summary:")[0]
    lines = [line.strip() for line in detail.splitlines() if line.strip()]
    noise = ("Check '", "While validating", "[ONNX Frontend]", "-- ", "Model wasn't", "FrontEnd API", "Exception from")
    useful = [line for line in lines if not line.startswith(noise)]
    return useful[-1][:200] if useful else ""
