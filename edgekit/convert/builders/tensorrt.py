"""TensorRT: engines are built on the device (an engine is tied to its GPU and TensorRT version).

The artifact carries what every TensorRT from 8.5 to 11.x needs to build the engine, because which one the
device has is known only there (JetPack 5: 8.5, JetPack 6.0: 8.6, 6.1+: 10.x, 7: 11.x):

- the ONNX each version parses (``convert/tensorrt_versions.plan_for``): ``model.onnx``; for fp16 on 11.x the
  strongly typed ``model_fp16.onnx`` (``convert/tensorrt_fp16``: 11.x removed ``--fp16``); for int8 the
  Q/DQ graph from the artifact's one calibration with int8 weights (``model_int8_qdq.onnx``, >= 10) and
  with float weights -> Q -> DQ (``model_int8_qdq_trt8.onnx``, 8.x); with a DLA core, the calibration
  cache in TensorRT's format (``tensorrt_calibration.cache``) for DLA's implicit int8 on <= 10.x;
- ``tensorrt_build.sh``: reads the version from trtexec's banner, runs that version's trtexec command (only
  flags that version accepts: ``convert/tensorrt_versions.trtexec_command``) and writes
  ``<engine>.json`` next to the engine (TensorRT version, GPU, the source ONNX and its sha256), which the
  runner checks before it loads the engine. ``edgekit build-engine ARTIFACT`` does the same through the
  Python API (``convert/tensorrt_engine.py``).

The batch: a static ONNX builds a static engine (the runner chunks larger batches); a dynamic batch axis
gets ``--minShapes/--optShapes/--maxShapes`` from the profile's batch range. fp32 builds pass ``--noTF32``
(TF32 is on by default from Ampere, 10-bit mantissa products); every build keeps a timing cache.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any, ClassVar

import onnx

from edgekit.convert.builders import BackendBuilder, BuildSource, FileSink, ProfileOption
from edgekit.convert.tensorrt_versions import (
    CALIBRATION_CACHE,
    ONNX_FP16,
    ONNX_FP32,
    ONNX_INT8,
    ONNX_INT8_FLOAT_WEIGHTS,
    VERSIONS,
    calibration_header,
    plan_for,
    trtexec_command,
)
from edgekit.errors import ConversionError
from edgekit.quant.placement import SYMMETRIC_INT8
from edgekit.runtime.artifact import ModelEntry
from edgekit.runtime.graph_nms import GraphNms

BUILD_SCRIPT = "tensorrt_build.sh"
#: the fp32 graph with NMS appended (``nms = "graph"``); ``model.onnx`` stays the artifact's host-NMS baseline
ONNX_FP32_NMS = "model_nms.onnx"
INT8_ONNX = ONNX_INT8
#: the family whose command is the manifest's ``build_command`` (JetPack 6.1+, the current JetPack)
DEFAULT_FAMILY = "10.x"
#: the version the calibration cache header names until the device rewrites it to its own
_CACHE_HEADER_VERSION = "10.3.0"
#: trtexec banner number patterns (shell ``case``) per family
_BANNER_PATTERNS = {"8.5": "85??", "8.6": "86??", "10.x": "10????", "11.x": "11????"}


class TensorRtBuilder(BackendBuilder):
    backend = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    qdq_placement = SYMMETRIC_INT8  # TensorRT accepts only symmetric int8 (zero point 0)
    builds_on_device = True  # an engine is tied to its GPU and TensorRT version: the device builds it
    #: ITopKLayer takes K <= 3840 (TensorRT's operator limits, 8.5 to 11.x); the INMSLayer after it considers up to
    #: 5000 boxes per image on every GPU JetPack 5+ runs on (2000 only on SM 5.3 / 6.2: Nano, TX2, JetPack 4)
    max_graph_topk = 3840
    tools = ()  # nothing TensorRT-side runs on the converter host; the device build records its version
    profile_options: ClassVar[Mapping[str, ProfileOption]] = {
        "workspace_mib": ProfileOption(int, "builder workspace (--memPoolSize=workspace:<MiB>)"),
        "dla_core": ProfileOption(int, "DLA core to build for (--useDLACore N --allowGPUFallback); -1 = GPU only"),
    }

    def build(self, source: BuildSource, precision: str, sink: FileSink, options: Mapping[str, Any]) -> ModelEntry:
        self.check_precision(precision)
        if not sink(ONNX_FP32).is_file():
            raise ConversionError("tensorrt build: the artifact has no model.onnx to build the engine from")
        engine = f"model_{precision}.engine"
        workspace = int(options.get("workspace_mib", 1024))
        dla = options.get("dla_core")
        dla_core = int(dla) if dla is not None and int(dla) >= 0 else None
        spec = source.spec
        h, w = spec.input_size
        dynamic = _dynamic_batch(source.onnx_path, spec.input_name)
        batch_range: tuple[int, int, int] = source.batch_range
        static_batch = 1 if dynamic else _static_batch(source.onnx_path, spec.input_name)
        plans = {family.name: plan_for(family, precision, engine, spec.input_name, (static_batch, 3, h, w),
                                       batch_range, dynamic, dla_core, workspace)
                 for family in VERSIONS.values()}
        needed = {plan.onnx for plan in plans.values()} | {plan.calib_cache for plan in plans.values()}
        self._write_sources(source, needed, sink)
        if source.graph_nms is not None:
            plans = self._append_nms(source, source.graph_nms, plans, sink)
        commands = {name: shlex.join(["trtexec", *trtexec_command(plan, family_version)])
                    for (name, plan), family_version in zip(plans.items(), _FAMILY_VERSIONS)}
        script = sink(BUILD_SCRIPT)
        script.write_text(_script(plans, precision, spec.input_name, (h, w)), encoding="utf-8")
        script.chmod(0o755)
        default = plans[DEFAULT_FAMILY]
        return ModelEntry(self.backend, precision, default.onnx,
                          options={"engine": engine, "build_command": commands[DEFAULT_FAMILY],
                                   "build_script": BUILD_SCRIPT, "built_on_device": True,
                                   "builds": {name: {"onnx": plan.onnx, "calib_cache": plan.calib_cache,
                                                     "dla_core": plan.dla_core, "command": commands[name]}
                                              for name, plan in plans.items()},
                                   "batch": {"dynamic": dynamic, "static": static_batch,
                                             "min": 1, "opt": default.opt_batch, "max": default.max_batch},
                                   "dla_core": dla_core, "workspace_mib": workspace,
                                   **({"graph_nms": source.graph_nms.to_dict()} if source.graph_nms else {})})

    def _append_nms(self, source: BuildSource, graph_nms: GraphNms, plans: dict[str, Any],
                    sink: FileSink) -> dict[str, Any]:
        """Every ONNX a plan parses gets the NMS tail (``convert/graph_nms``): ``model.onnx`` (the artifact's
        baseline, which stays as it is) as ``model_nms.onnx``, the build-only graphs (fp16, Q/DQ) in place. The
        tail stays float32 in each: the strongly typed fp16 graph keeps fp32 outputs, and TensorRT runs the
        decode and NMS at the precision of its inputs."""
        from dataclasses import replace

        from edgekit.convert.graph_nms import append_nms, default_opset, nms_tail, output_shapes

        if self.max_graph_topk is not None and graph_nms.pre_nms_topk > self.max_graph_topk:
            raise ConversionError(f"tensorrt build: NMS in the graph with top-{graph_nms.pre_nms_topk} candidates; "
                                  f"TensorRT's TopK takes at most {self.max_graph_topk} (cap it with "
                                  "GraphNms.capped)")
        fp32 = onnx.load(str(source.onnx_path))
        # one tail for every form (the fp16 and Q/DQ writers keep the fp32 graph's opset and raw outputs)
        tail = nms_tail(source.spec, graph_nms, output_shapes(fp32, source.spec), default_opset(fp32))
        renamed = {}
        for name in sorted({plan.onnx for plan in plans.values()}):
            target = ONNX_FP32_NMS if name == ONNX_FP32 else name
            model = fp32 if name == ONNX_FP32 else onnx.load(str(sink(name)))
            onnx.save(append_nms(model, source.spec, tail), str(sink(target)))
            renamed[name] = target
        return {family: replace(plan, onnx=renamed[plan.onnx]) for family, plan in plans.items()}

    def _write_sources(self, source: BuildSource, needed: set[str | None], sink: FileSink) -> None:
        if ONNX_FP16 in needed:
            from edgekit.convert.tensorrt_fp16 import write_fp16

            write_fp16(source.onnx_path, sink(ONNX_FP16))
        if needed & {ONNX_INT8, ONNX_INT8_FLOAT_WEIGHTS, CALIBRATION_CACHE}:
            from edgekit.convert.tensorrt_int8 import (
                float_weight_qdq,
                normalized_input_range,
                tensor_ranges,
                write_calibration_cache,
            )
            from edgekit.quant.qdq import write_qdq

            calibration = source.require_calibration(self.backend)
            qdq = write_qdq(source.onnx_path, calibration, self.qdq_placement, sink(ONNX_INT8))
            # both weight forms, also where a DLA build reads the cache: dla_core = -1 on the device needs them
            onnx.save(float_weight_qdq(qdq), str(sink(ONNX_INT8_FLOAT_WEIGHTS)))
            if CALIBRATION_CACHE in needed:
                norm = source.spec.normalization
                inputs = {source.spec.input_name: normalized_input_range(norm.scale, norm.mean, norm.std)}
                ranges, missing = tensor_ranges(onnx.load(str(source.onnx_path)), calibration, inputs)
                if missing:
                    raise ConversionError(f"tensorrt calibration cache: no range for {len(missing)} tensor(s) "
                                          f"TensorRT will ask for ({', '.join(missing[:3])}); "
                                          "build int8 for the GPU (dla_core = -1) instead")
                sink(CALIBRATION_CACHE).write_text(
                    write_calibration_cache(ranges, calibration_header(_CACHE_HEADER_VERSION)), encoding="utf-8")


#: one representative version per family (the table's lower bound) to generate its command with
_FAMILY_VERSIONS = [f"{major}.{minor}.0" for major, minor in VERSIONS]


def _input_dims(onnx_path: Any, input_name: str) -> list[Any]:
    model = onnx.load(str(onnx_path), load_external_data=False)
    for graph_input in model.graph.input:
        if graph_input.name == input_name:
            return [d.dim_value if d.HasField("dim_value") else d.dim_param
                    for d in graph_input.type.tensor_type.shape.dim]
    raise ConversionError(f"tensorrt build: the ONNX has no input {input_name!r}")


def _dynamic_batch(onnx_path: Any, input_name: str) -> bool:
    dims = _input_dims(onnx_path, input_name)
    return bool(dims) and (not isinstance(dims[0], int) or dims[0] == 0)


def _static_batch(onnx_path: Any, input_name: str) -> int:
    dims = _input_dims(onnx_path, input_name)
    return int(dims[0]) if dims and isinstance(dims[0], int) and dims[0] > 0 else 1


def _script(plans: Mapping[str, Any], precision: str, input_name: str, size: tuple[int, int]) -> str:
    """POSIX sh: the device's TensorRT version from trtexec's banner -> that version's command -> engine + record."""
    h, w = size
    branches = []
    for (name, plan), version in zip(plans.items(), _FAMILY_VERSIONS):
        argv = trtexec_command(plan, version)
        calib = ""
        if plan.calib_cache:
            # TensorRT refuses a cache whose header names another version: rewrite it to this device's
            calib = (f'    sed "1s/.*/TRT-${{NUMBER}}-EntropyCalibration2/" {plan.calib_cache} > "$CACHE"\n')
            argv = [a if not a.startswith("--calib=") else '--calib="$CACHE"' for a in argv]
        quoted = " ".join(a if a.startswith("--calib=") else shlex.quote(a) for a in argv)
        branches.append(f"  {_BANNER_PATTERNS[name]})  # TensorRT {name}\n"
                        f"    ONNX={shlex.quote(plan.onnx)}\n{calib}"
                        f'    "$TRTEXEC" {quoted}\n    ;;\n')
    engine = next(iter(plans.values())).engine
    return (
        "#!/usr/bin/env sh\n"
        f"# Build the TensorRT {precision} engine on the device itself (input {input_name} [N,3,{h},{w}]).\n"
        "# Run from anywhere; trtexec ships with JetPack at /usr/src/tensorrt/bin/trtexec (or set TRTEXEC).\n"
        "# The same build through the Python API: edgekit build-engine <this folder>\n"
        "set -e\ncd \"$(dirname \"$0\")\"\n"
        "TRTEXEC=${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}\n"
        "NUMBER=$(\"$TRTEXEC\" --help 2>&1 | sed -n 's/.*\\[TensorRT v\\([0-9][0-9]*\\)\\].*/\\1/p' | head -n 1)\n"
        "CACHE=tensorrt_calibration_${NUMBER}.cache\n"
        "case \"$NUMBER\" in\n"
        + "".join(branches) +
        "  *)\n    echo \"error: $TRTEXEC reports TensorRT '$NUMBER'; this artifact has builds for TensorRT "
        + ", ".join(plans) + "\" >&2\n    exit 2\n    ;;\nesac\n"
        "GPU=$( (nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) || true)\n"
        "[ -n \"$GPU\" ] || GPU=$(tr -d '\\000' < /proc/device-tree/model 2>/dev/null || echo unknown)\n"
        "GPU=$(printf '%s' \"$GPU\" | tr -d '\"\\\\')\n"
        "SHA=$(sha256sum \"$ONNX\" | cut -d ' ' -f 1)\n"
        f"printf '{{\"format\": \"edgekit-tensorrt-engine\", \"tensorrt_number\": %s, \"gpu\": \"%s\", "
        f"\"onnx\": \"%s\", \"onnx_sha256\": \"%s\", \"built_by\": \"trtexec\"}}\\n' "
        f"\"$NUMBER\" \"$GPU\" \"$ONNX\" \"$SHA\" > {shlex.quote(engine)}.json\n"
        f"echo \"built {engine} with TensorRT $NUMBER from $ONNX\"\n")
