"""TensorRT: engines are built on the device (an engine is tied to its GPU and TensorRT version).

The artifact carries the ONNX graph the builder on the Jetson reads, and the exact ``trtexec``
command for the chosen precision; the manifest entry names the engine file the command writes.
``--memPoolSize=workspace:<MiB>`` is the flag both TensorRT 8.5 (JetPack 5) and 10.x accept
(``--workspace`` was removed in 10.x).

int8 is explicit quantisation: the calibration result written as Q/DQ ONNX with the ``tensorrt``
placement (symmetric int8 activations, zero point 0 — the only encoding TensorRT accepts — and
int8 per-channel weights), built with ``--int8`` (int8 tactics allowed) and ``--fp16`` (layers left
in float may run in fp16). TensorRT 11 accepts int8 only this way; on JetPack's TensorRT 8.5 / 10.x
it is the path that needs no calibrator on the device.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from edgekit.convert.builders import BackendBuilder, BuildSource, FileSink, ProfileOption
from edgekit.errors import ConversionError
from edgekit.quant.placement import SYMMETRIC_INT8
from edgekit.runtime.artifact import ModelEntry

BUILD_SCRIPT = "tensorrt_build.sh"
_PRECISION_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}
INT8_ONNX = "model_int8_qdq.onnx"


class TensorRtBuilder(BackendBuilder):
    backend = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    qdq_placement = SYMMETRIC_INT8  # TensorRT accepts only symmetric int8 (zero point 0)
    builds_on_device = True  # an engine is tied to its GPU and TensorRT version: the device builds it
    tools = ()  # nothing TensorRT-side runs on the converter host; the device build records its version
    profile_options = {
        "workspace_mib": ProfileOption(int, "builder workspace (--memPoolSize=workspace:<MiB>)"),
        "dla_core": ProfileOption(int, "DLA core to build for (--useDLACore N --allowGPUFallback); -1 = GPU only"),
    }

    def build(self, source: BuildSource, precision: str, sink: FileSink, options: Mapping[str, Any]) -> ModelEntry:
        self.check_precision(precision)
        onnx_file = "model.onnx"
        if not sink(onnx_file).is_file():
            raise ConversionError("tensorrt build: the artifact has no model.onnx to build the engine from")
        if precision == "int8":
            from edgekit.quant.qdq import write_qdq

            write_qdq(source.onnx_path, source.require_calibration(self.backend), "tensorrt", sink(INT8_ONNX))
            onnx_file = INT8_ONNX
        engine = f"model_{precision}.engine"
        workspace = int(options.get("workspace_mib", 1024))
        h, w = source.spec.input_size
        command = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine}", *_PRECISION_FLAGS[precision],
                   f"--memPoolSize=workspace:{workspace}"]
        script = sink(BUILD_SCRIPT)
        script.write_text(
            "#!/usr/bin/env sh\n"
            f"# Build the TensorRT {precision} engine on the Jetson itself (input {source.spec.input_name} [1,3,{h},{w}]).\n"
            "# Run from the artifact folder; trtexec ships with JetPack at /usr/src/tensorrt/bin/trtexec.\n"
            "set -e\ncd \"$(dirname \"$0\")\"\n"
            "TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}\n"
            f"\"$TRTEXEC\" {shlex.join(command[1:])}\n", encoding="utf-8")
        script.chmod(0o755)
        return ModelEntry(self.backend, precision, onnx_file,
                          options={"engine": engine, "build_command": shlex.join(command), "build_script": BUILD_SCRIPT,
                                   "built_on_device": True})
