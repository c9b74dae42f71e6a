"""INT8 vs FP32 per backend, calibration time per method, and INT8 accuracy (edgekit vs NNCF).

1. Latency (``--imgsz``, default 640): a YOLOv8n-size model (yolov8, width 0.25, depth 0.33, 80 classes,
   random weights) converted by ``edgekit convert`` for intel-cpu at int8 (ONNX Runtime fp32, ONNX
   Runtime Q/DQ int8, edgekit's OpenVINO int8) plus OpenVINO fp32 (f32 hint), NNCF's default
   quantisation of that fp32 OpenVINO model (``nncf.quantize(model, nncf.Dataset(tensors))``, preset
   performance, the same calibration tensors), and NCNN fp32 and int8 (``edgekit convert`` for
   raspberry-pi-5 at this size; int8 from the same calibration result, skipped with a note when it
   fails), all through edgekit's runners. All models are timed in one interleaved run (``benchmarks.timing``:
   a random order and a settle pause per call) on the same preprocessed tensor; medians and p90s. What OpenVINO really executes is read from
   ``compiled.get_runtime_model()`` (runtime precision per layer type) and, with ``--profile``, from
   OpenVINO's per-layer performance counters.
2. Calibration time for ``--calib-images`` (300) images at ``--imgsz`` with
   ``edgekit.quant.collect.calibrate`` for each method, on the same graph; the bundled calibration set
   (154 images) is used cyclically, the second time round horizontally flipped (in memory), so all 300
   tensors differ. NNCF's ``quantize`` on the same 300 tensors for comparison.
   With ``--ort-threads`` (default 1,2): a second interleaved run of ONNX Runtime alone at each thread count —
   edgekit's fp32 and int8 models and ONNX Runtime's own ``quantize_static`` model of the same fp32 graph (QDQ,
   per-channel int8 weights, uint8 activations, MinMax, on the same calibration tensors) — with what ORT's
   optimised graph runs (integer QLinear* kernels vs float ops).
3. Accuracy: the trained fixture ``edgekit/zoo/yolov8.pt`` at its own size (160x160), converted for
   intel-cpu at int8 with the defaults (method ``mse``, the bundled calibration set), NNCF on the same
   calibration tensors, mAP@0.5:0.95 on the synthetic validation split (300 images, validate's protocol).

    python benchmarks/bench_int8.py [--runs 40] [--threads 2] [--ort-threads 1,2] [--skip-calibration] [--skip-accuracy]
                                    [--skip-openvino-ncnn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import interleaved

METHODS = ("minmax", "percentile", "entropy", "mse")


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- models and runners --------------------------------------------------------------------------


def ov_fp32_ir(onnx_path: Path, spec, xml_path: Path) -> Path:
    """The fp32 OpenVINO IR of an ONNX graph, written exactly as edgekit's builder writes it."""
    from edgekit.convert.builders import BuildSource
    from edgekit.convert.builders.openvino import write_ir

    return write_ir(BuildSource(onnx_path, spec), xml_path, compress_to_fp16=False)


def nncf_quantize(fp32_xml: Path, tensors: Sequence[np.ndarray], out_xml: Path | None) -> float:
    """NNCF's default post-training quantisation of the fp32 IR (preset performance), saved to ``out_xml`` unless
    None; returns the seconds of ``quantize``."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_xml))
    started = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(list(tensors)), preset=nncf.QuantizationPreset.PERFORMANCE,
                              subset_size=len(tensors))
    seconds = time.perf_counter() - started
    if out_xml is not None:
        ov.save_model(quantized, str(out_xml), compress_to_fp16=False)
    return seconds


def ov_runner(xml: Path, threads: int, profile: bool = False):
    from edgekit.runtime.backends.openvino import OpenVinoRunner

    runner = OpenVinoRunner(xml, threads=threads, inference_precision="f32")
    if profile:  # OpenVinoRunner has no PERF_COUNT option: compile a profiled copy directly
        import openvino as ov

        core = ov.Core()
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": True}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        return core.compile_model(core.read_model(str(xml)), "CPU", config)
    return runner


def runtime_layers(xml: Path, threads: int) -> Counter:
    """(runtime layer type, runtime precision) -> count, from the compiled model's runtime graph."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(xml)), "CPU", config)
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
        precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
        counts[(kind, precision)] += 1
    return counts


def fake_quantize_consumers(xml: Path) -> Counter:
    """Op type of every consumer of a FakeQuantize in the IR: where the activations are quantised."""
    import openvino as ov

    counts: Counter = Counter()
    for op in ov.Core().read_model(str(xml)).get_ops():
        if op.get_type_name() == "FakeQuantize":
            for output in op.outputs():
                for target in output.get_target_inputs():
                    counts[target.get_node().get_type_name()] += 1
    return counts


def profile_by_layer_type(models: dict[str, Path], tensor: np.ndarray, threads: int, runs: int) -> dict[str, Counter]:
    """Median over runs of the summed per-layer real time (ms), by (layer type, exec type), per model."""
    compiled = {name: ov_runner(xml, threads, profile=True) for name, xml in models.items()}
    requests = {name: c.create_infer_request() for name, c in compiled.items()}
    samples: dict[str, list[Counter]] = {name: [] for name in models}
    for run in range(runs + 2):
        for name in (list(models) if run % 2 == 0 else list(models)[::-1]):
            request = requests[name]
            request.infer({0: tensor})
            if run < 2:
                continue
            totals: Counter = Counter()
            for info in request.get_profiling_info():
                if info.status == info.Status.EXECUTED:
                    totals[(info.node_type, info.exec_type)] += info.real_time.total_seconds() * 1000
            samples[name].append(totals)
    result = {}
    for name, counters in samples.items():
        keys = set().union(*counters)
        result[name] = Counter({k: statistics.median(c.get(k, 0.0) for c in counters) for k in keys})
    return result


# --- timing --------------------------------------------------------------------------------------


def p90(values: Sequence[float]) -> float:
    return float(np.percentile(values, 90))


# --- 1. latency ----------------------------------------------------------------------------------


def latency_section(args, tmp: Path, model, calib_tensors_for: Callable) -> dict:
    from edgekit.convert.chain import convert
    from edgekit.quant.pipeline import Int8Options
    from edgekit.runtime.artifact import read_manifest
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner
    from edgekit.runtime.preprocess import preprocess
    from edgekit.targets import load_target

    size = (args.imgsz, args.imgsz)
    art = tmp / "intel-int8"
    say(f"[latency] convert intel-cpu int8 at {size} ({args.latency_calib_images} calibration images, mse"
        f"{'' if args.drift_budget is None else f', --drift-budget {args.drift_budget:g}'})")
    convert(model, load_target("intel-cpu"), art, precision="int8", input_size=size,
            int8=Int8Options(images=args.latency_calib_images, method="mse", force=True,
                             drift_budget=args.drift_budget))
    manifest = read_manifest(art)
    say(f"[latency] ONNX Runtime head outputs: {manifest.info['int8']['head_outputs']['reason']}")
    spec = manifest.spec
    onnx_path = art / "model.onnx"
    tensors = calib_tensors_for(spec, args.latency_calib_images)
    image = np.clip(np.random.default_rng(0).normal(120, 40, (720, 1280, 3)), 0, 255).astype(np.uint8)
    tensor, _ = preprocess([image], spec)
    ort = ort_section(args, tmp, onnx_path, art / manifest.find("onnxruntime", "int8").file, spec, tensors, tensor)
    if args.skip_openvino_ncnn:
        return {"ort": ort, "art": art, "spec": spec, "onnx": onnx_path}
    files = {"openvino/fp32": ov_fp32_ir(onnx_path, spec, tmp / "ov_fp32.xml"),
             "openvino/int8 (edgekit)": art / manifest.find("openvino", "int8").file}
    say(f"[latency] nncf.quantize on the same {len(tensors)} tensors")
    nncf_seconds = nncf_quantize(files["openvino/fp32"], tensors, tmp / "ov_nncf.xml")
    files["openvino/int8 (NNCF)"] = tmp / "ov_nncf.xml"

    feeds = {spec.input_name: tensor}
    runners = {"onnxruntime/fp32": OnnxRuntimeRunner(onnx_path, threads=args.threads),
               "onnxruntime/int8 (Q/DQ)": OnnxRuntimeRunner(art / manifest.find("onnxruntime", "int8").file,
                                                            threads=args.threads)}
    for name in ("openvino/fp32", "openvino/int8 (edgekit)", "openvino/int8 (NNCF)"):
        runners[name] = ov_runner(files[name], args.threads)
    for runner in runners.values():
        runner.activate()
    calls: dict[str, Callable[[], object]] = {name: (lambda r=runner: r.infer(feeds)) for name, runner in runners.items()}
    notes = []
    if not args.skip_ncnn:
        calls.update(ncnn_models(args, tmp, model, art, spec, tensor, notes))

    say(f"[latency] {len(calls)} models x {args.runs} interleaved runs, {args.threads} threads (load {load()})")
    load_before = load()
    times = interleaved(calls, args.runs)
    load_after = load()
    for runner in runners.values():
        runner.deactivate()
    layers = {name: runtime_layers(files[name], args.threads) for name in files}
    consumers = {name: fake_quantize_consumers(files[name]) for name in ("openvino/int8 (edgekit)", "openvino/int8 (NNCF)")}
    profile = None
    if args.profile:
        say("[latency] OpenVINO per-layer profile")
        profile = profile_by_layer_type({k: files[k] for k in ("openvino/int8 (edgekit)", "openvino/int8 (NNCF)")},
                                        tensor, args.threads, args.profile_runs)
    return {"times": times, "layers": layers, "consumers": consumers, "profile": profile, "notes": notes,
            "load": (load_before, load_after), "nncf_seconds": nncf_seconds, "art": art, "spec": spec,
            "onnx": onnx_path, "ort": ort}


def quantize_static_model(onnx_path: Path, tensors: Sequence[np.ndarray], out: Path) -> Path:
    """ONNX Runtime's own static quantiser on the same fp32 graph: QDQ, per-channel int8 weights, uint8 activations,
    MinMax (what a user would otherwise pick)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    input_name = onnx.load(str(onnx_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{input_name: t} for t in tensors])

        def get_next(self):
            return next(self.feeds, None)

    quantize_static(str(onnx_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return out


def ort_executed_ops(path: Path, threads: int, out: Path) -> Counter:
    """Op types of the graph ONNX Runtime really runs (its optimised graph, saved)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(out)
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return Counter(node.op_type for node in onnx.load(str(out)).graph.node)


def ort_section(args, tmp: Path, onnx_path: Path, int8_path: Path, spec, tensors: Sequence[np.ndarray],
                tensor: np.ndarray) -> dict:
    """edgekit's ORT fp32 / int8 and quantize_static's int8, each at every ``--ort-threads``, in ONE interleaved run."""
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner

    say(f"[ort] quantize_static on the same {len(tensors)} tensors")
    models = {"fp32 (edgekit)": onnx_path, "int8 (edgekit)": int8_path,
              "int8 (quantize_static)": quantize_static_model(onnx_path, tensors, tmp / "ort_quantize_static.onnx")}
    feeds = {spec.input_name: tensor}
    runners = {(name, threads): OnnxRuntimeRunner(path, threads=threads)
               for threads in args.ort_threads for name, path in models.items()}
    for runner in runners.values():
        runner.activate()
    calls = {f"{name} @{threads}": (lambda r=runner: r.infer(feeds)) for (name, threads), runner in runners.items()}
    say(f"[ort] {len(calls)} sessions x {args.runs} interleaved runs (load {load()})")
    uptime_before = uptime()
    times = interleaved(calls, args.runs)
    uptime_after = uptime()
    for runner in runners.values():
        runner.deactivate()
    ops = {name: ort_executed_ops(path, args.ort_threads[0], tmp / f"ort_opt_{i}.onnx")
           for i, (name, path) in enumerate(models.items())}
    return {"times": times, "ops": ops, "uptime": (uptime_before, uptime_after), "threads": args.ort_threads,
            "calib_tensors": len(tensors)}


def uptime() -> str:
    import subprocess

    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average {load()}"


def format_ort(section: dict) -> str:
    med = {name: statistics.median(values) for name, values in section["times"].items()}
    lines = ["| threads | fp32 (edgekit) ms | int8 (edgekit) ms | int8 (quantize_static) ms | "
             "edgekit int8 / quantize_static | edgekit int8 / edgekit fp32 | quantize_static / fp32 |",
             "|---|---|---|---|---|---|---|"]
    for threads in section["threads"]:
        fp32, ours, theirs = (med[f"{name} @{threads}"] for name in ("fp32 (edgekit)", "int8 (edgekit)",
                                                                      "int8 (quantize_static)"))
        lines.append(f"| {threads} | {fp32:.1f} | {ours:.1f} | {theirs:.1f} | **{ours / theirs:.2f}×** | "
                     f"**{ours / fp32:.2f}×** | {theirs / fp32:.2f}× |")
    ops = section["ops"]
    keys = sorted(set().union(*ops.values()))
    lines += ["", "What ONNX Runtime's optimised graph runs (op counts):", "",
              "| op | " + " | ".join(ops) + " |", "|---|" + "---|" * len(ops)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(str(ops[name].get(key, 0)) for name in ops) + " |")
    return "\n".join(lines)


def ncnn_models(args, tmp: Path, model, intel_art: Path, spec, tensor: np.ndarray, notes: list[str]) -> dict:
    """NCNN fp32 and int8 (``edgekit convert`` for raspberry-pi-5 at the latency size), both through NcnnRunner.

    The int8 artifact reuses the intel-cpu artifact's calibration (``Int8Options(cache=...)``: the export is
    the same graph), so every int8 model of the run comes from one calibration result.
    """
    from edgekit.convert.chain import convert
    from edgekit.quant.pipeline import Int8Options
    from edgekit.runtime.artifact import read_manifest
    from edgekit.runtime.backends.ncnn import NcnnRunner
    from edgekit.targets import load_target

    feeds = {spec.input_name: tensor}
    calls = {}
    for precision in ("fp32", "int8"):
        art = tmp / f"ncnn-{precision}"
        say(f"[latency] convert raspberry-pi-5 {precision} (pnnx)")
        try:
            convert(model, load_target("raspberry-pi-5"), art, precision=precision, input_size=spec.input_size,
                    int8=Int8Options(cache=intel_art / "calibration.json") if precision == "int8" else None)
            entry = read_manifest(art).find("ncnn", precision)
            runner = NcnnRunner.from_artifact(art / entry.file, entry.options, threads=args.threads)
            runner.activate()
            runner.infer(feeds)
        except Exception as exc:  # the ncnn toolchain is optional; int8 is new
            notes.append(f"NCNN {precision} skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        if precision == "int8":
            info = entry.options.get("int8", {})
            floats = info.get("float_layers", {})
            notes.append(f"NCNN int8: {info.get('layers', '?')} layers int8, {len(floats)} float"
                         + (f" ({'; '.join(sorted(set(floats.values())))[:200]})" if floats else ""))
        calls[f"ncnn/{precision}" + (" (edgekit)" if precision == "int8" else "")] = (
            lambda r=runner: r.infer(feeds))
    return calls


def format_latency(section: dict) -> str:
    times = section["times"]
    med = {name: statistics.median(values) for name, values in times.items()}
    fp32_of = {"onnxruntime": "onnxruntime/fp32", "openvino": "openvino/fp32", "ncnn": "ncnn/fp32"}
    nncf = med.get("openvino/int8 (NNCF)")
    lines = ["| model | median ms | p90 ms | vs its backend's fp32 | vs NNCF int8 |", "|---|---|---|---|---|"]
    for name, values in times.items():
        base = med.get(fp32_of[name.split("/")[0]])
        ratio = f"{med[name] / base:.2f}×" if base and name != fp32_of[name.split("/")[0]] else "1.00×"
        vs_nncf = f"{med[name] / nncf:.3f}×" if nncf and name.startswith("openvino/int8") else ""
        lines.append(f"| {name} | {med[name]:.2f} | {p90(values):.2f} | {ratio} | {vs_nncf} |")
    return "\n".join(lines)


def format_layers(section: dict) -> str:
    layers = section["layers"]
    names = list(layers)
    keys = sorted(set().union(*layers.values()))
    keys = [k for k in keys if k[0] not in ("Const", "Input", "Output")]
    lines = ["| runtime layer (precision) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for kind, precision in keys:
        lines.append(f"| {kind} ({precision}) | " + " | ".join(str(layers[n].get((kind, precision), 0)) for n in names) + " |")
    consumers = section["consumers"]
    lines += ["", "FakeQuantize consumers in the IR (where activations are quantised):"]
    for name, counts in consumers.items():
        lines.append(f"- {name}: {sum(counts.values())} FakeQuantize outputs feed "
                     + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    return "\n".join(lines)


def format_profile(profile: dict[str, Counter]) -> str:
    names = list(profile)
    keys = sorted(set().union(*profile.values()), key=lambda k: -max(profile[n].get(k, 0.0) for n in names))
    lines = ["| layer type (exec type) | " + " | ".join(f"{n} ms" for n in names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        values = [profile[n].get(key, 0.0) for n in names]
        if max(values) < 0.05:
            continue
        lines.append(f"| {key[0]} ({key[1]}) | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    lines.append("| **sum of medians** | " + " | ".join(f"{sum(profile[n].values()):.2f}" for n in names) + " |")
    return "\n".join(lines)


# --- 2. calibration time -------------------------------------------------------------------------

GIVEN = ("images", "tensors")  # what edgekit's calibration is handed: see calibration_section


class CyclicImages:
    """``count`` network inputs from the bundled calibration set: each image as is, then flipped, then ..."""

    def __init__(self, spec, count: int) -> None:
        from edgekit.quant.calibration import default_calibration_dir, find_calibration_images
        from edgekit.runtime.preprocess import load_image

        found = find_calibration_images(default_calibration_dir(), warn=lambda message: None)
        self.images = [load_image(path) for path in found.paths]
        self.spec, self.count = spec, count

    def image(self, index: int) -> np.ndarray:
        image = self.images[index % len(self.images)]
        return np.ascontiguousarray(image[:, ::-1]) if (index // len(self.images)) % 2 else image

    def __call__(self):
        from edgekit.runtime.preprocess import preprocess

        for index in range(self.count):
            yield preprocess([self.image(index)], self.spec)[0]


def calibration_section(args, onnx_path: Path, spec, tmp: Path) -> dict:
    """Every method and NNCF's ``quantize`` timed whole, ``--calib-rounds`` rounds in a random order per round
    (``benchmarks.timing.interleaved``, 2 s pause before each call); medians. NNCF's call reads the fp32 IR and
    quantises (no save); edgekit's builds its observation graph and calibrates, preprocessing included."""
    from edgekit.quant.collect import calibrate

    source = CyclicImages(spec, args.calib_images)
    uptime_before = uptime()
    started = time.perf_counter()
    tensors = list(source())
    preprocess_seconds = time.perf_counter() - started
    results: dict[str, object] = {}

    def edgekit_call(method: str, given: str) -> Callable[[], object]:
        # "images": letterbox + normalise inside the timed call, as `convert` does; "tensors": the very list NNCF is
        # given, so the two tools are timed on the same work (the images' decoding is outside both)
        def call():
            say(f"[calibration] {method} on {args.calib_images} {given} at {spec.input_size} (load {load()})")
            results[(method, given)] = calibrate(onnx_path, source if given == "images" else lambda: tensors,
                                                 method=method)
        return call

    calls = {f"{method} ({given})": edgekit_call(method, given) for method in args.methods for given in GIVEN}
    if not args.skip_nncf_calibration:
        fp32_xml = tmp / "ov_fp32.xml"
        if not fp32_xml.is_file():
            ov_fp32_ir(onnx_path, spec, fp32_xml)

        def nncf_call():
            say(f"[calibration] nncf.quantize on the same {len(tensors)} tensors (load {load()})")
            nncf_quantize(fp32_xml, tensors, None)

        calls["nncf"] = nncf_call
    times = interleaved(calls, runs=args.calib_rounds, warmup=0, settle_ms=2000)
    rows = [{"method": method, "given": given, "seconds": statistics.median(times[f"{method} ({given})"]) / 1000,
             "spread": (min(times[f"{method} ({given})"]) / 1000, max(times[f"{method} ({given})"]) / 1000),
             "tensors": len(results[(method, given)].activation_ranges),
             "engine": results[(method, given)].notes.get("observed_with", "")}
            for method in args.methods for given in GIVEN]
    nncf_row = None
    if "nncf" in times:
        nncf_row = {"seconds": statistics.median(times["nncf"]) / 1000,
                    "spread": (min(times["nncf"]) / 1000, max(times["nncf"]) / 1000)}
    return {"rows": rows, "preprocess_seconds": preprocess_seconds, "count": len(tensors), "rounds": args.calib_rounds,
            "distinct": len(source.images), "nncf": nncf_row, "uptime": (uptime_before, uptime())}


def format_calibration(section: dict, spec) -> str:
    count = section["count"]
    nncf = section["nncf"]["seconds"] if section["nncf"] else None
    lines = ["| method | given | observed by | tensors observed | seconds (median) | min - max | ms per image | vs NNCF |",
             "|---|---|---|---|---|---|---|---|"]
    for row in section["rows"]:
        ratio = f"**{row['seconds'] / nncf:.2f}×**" if nncf else ""
        given = "decoded images (preprocessing timed)" if row["given"] == "images" else "NNCF's tensors"
        lines.append(f"| edgekit {row['method']} | {given} | {row['engine']} | {row['tensors']} | {row['seconds']:.1f} | "
                     f"{row['spread'][0]:.1f} - {row['spread'][1]:.1f} | {row['seconds'] * 1000 / count:.0f} | "
                     f"{ratio} |")
    if section["nncf"]:
        low, high = section["nncf"]["spread"]
        lines.append(f"| NNCF `quantize` (default: statistics + fast bias correction) | the tensors | OpenVINO | | "
                     f"{nncf:.1f} | "
                     f"{low:.1f} - {high:.1f} | {nncf * 1000 / count:.0f} | 1.00× |")
    lines.append("")
    lines.append(f"{count} tensors at {spec.input_size[0]}×{spec.input_size[1]}: the {section['distinct']} bundled "
                 f"images, then the same images flipped horizontally (in memory). {section['rounds']} rounds, every "
                 f"calibration once per round in a random order. The images are decoded once beforehand; edgekit's "
                 f"'decoded images' rows include preprocessing, as ``convert`` does (letterbox + normalise of all "
                 f"{count}: {section['preprocess_seconds']:.1f} s, measured alone); its 'NNCF's tensors' rows and NNCF "
                 f"were given the same list of {count} preprocessed tensors. `uptime` before: "
                 f"`{section['uptime'][0]}`; after: `{section['uptime'][1]}`.")
    return "\n".join(lines)


# --- 3. accuracy ---------------------------------------------------------------------------------


def accuracy_section(args, tmp: Path) -> dict:
    from edgekit.convert.chain import convert
    from edgekit.models.loading import load_checkpoint
    from edgekit.quant.calibration import calibration_tensors, default_calibration_dir, find_calibration_images
    from edgekit.quant.pipeline import Int8Options
    from edgekit.runtime.artifact import read_manifest
    from edgekit.runtime.backends.onnxruntime import OnnxRuntimeRunner
    from edgekit.runtime.detector import Detector
    from edgekit.targets import load_target
    from edgekit.validate.coco_eval import evaluate_detections
    from edgekit.validate.datasets import load_dataset
    from edgekit.validate.run import map_postprocess, run_detector
    from edgekit.validate.synth import generate

    checkpoint = Path(__file__).resolve().parents[1] / "edgekit" / "zoo" / "yolov8.pt"
    model = load_checkpoint(checkpoint)
    size = tuple(model.spec.input_size)
    val = generate(tmp / "val", "val", 0, progress=False)
    dataset = load_dataset(val)
    art = tmp / "fixture-int8"
    say(f"[accuracy] convert {checkpoint.name} for intel-cpu int8 at {size} (defaults: mse, bundled set)")
    convert(model, load_target("intel-cpu"), art, precision="int8", input_size=size, int8=Int8Options())
    manifest = read_manifest(art)
    spec = manifest.spec
    found = find_calibration_images(default_calibration_dir(), limit=load_target("intel-cpu").calibration.images,
                                    warn=lambda message: None)
    tensors = list(calibration_tensors(found, spec))
    fp32_xml = ov_fp32_ir(art / "model.onnx", spec, tmp / "fixture_ov_fp32.xml")
    say(f"[accuracy] nncf.quantize on the same {len(tensors)} calibration tensors")
    nncf_quantize(fp32_xml, tensors, tmp / "fixture_ov_nncf.xml")
    runners = {
        "onnxruntime/fp32": lambda: OnnxRuntimeRunner(art / "model.onnx", threads=args.threads),
        "onnxruntime/int8 (Q/DQ)": lambda: OnnxRuntimeRunner(art / manifest.find("onnxruntime", "int8").file,
                                                             threads=args.threads),
        "openvino/fp32": lambda: ov_runner(fp32_xml, args.threads),
        "openvino/int8 (edgekit)": lambda: ov_runner(art / manifest.find("openvino", "int8").file, args.threads),
        "openvino/int8 (NNCF)": lambda: ov_runner(tmp / "fixture_ov_nncf.xml", args.threads),
    }
    rows = {}
    for name, make in runners.items():
        say(f"[accuracy] {name} on {len(dataset)} images")
        with Detector(make(), spec, map_postprocess(spec)) as detector:
            run = run_detector(detector, dataset, name)
        metrics = evaluate_detections(dataset, run.detections)
        rows[name] = (metrics.map_50_95, metrics.map_50)
    layers = {"openvino/int8 (edgekit)": runtime_layers(art / manifest.find("openvino", "int8").file, args.threads),
              "openvino/int8 (NNCF)": runtime_layers(tmp / "fixture_ov_nncf.xml", args.threads)}
    int8_info = manifest.info.get("int8", {})
    return {"rows": rows, "size": size, "images": len(dataset), "calib": len(tensors), "layers": layers,
            "int8": int8_info}


def format_accuracy(section: dict) -> str:
    rows = section["rows"]
    reference = {"onnxruntime": rows["onnxruntime/fp32"][0], "openvino": rows["openvino/fp32"][0]}
    lines = ["| model | mAP@.5:.95 | mAP@.5 | drop vs its backend's fp32 (pts) |", "|---|---|---|---|"]
    for name, (m, m50) in rows.items():
        drop = (reference[name.split("/")[0]] - m) * 100
        lines.append(f"| {name} | {m:.4f} | {m50:.4f} | {drop:+.2f} |")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="interleaved latency runs per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=640, help="input size of the latency and calibration-time model")
    parser.add_argument("--latency-calib-images", type=int, default=32,
                        help="calibration images for the latency models (ranges do not change latency)")
    parser.add_argument("--calib-images", type=int, default=300)
    parser.add_argument("--calib-rounds", type=int, default=3, help="interleaved rounds of the calibration timing")
    parser.add_argument("--drift-budget", type=float, default=None,
                        help="--drift-budget of the latency model's conversion (ONNX Runtime may then requantise its "
                             "head outputs, quant.head_outputs)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--profile", action="store_true", help="OpenVINO per-layer profile of both int8 models")
    parser.add_argument("--profile-runs", type=int, default=20)
    parser.add_argument("--ort-threads", default="1,2",
                        help="thread counts of the ONNX Runtime fp32 / int8 / quantize_static interleaved run")
    parser.add_argument("--skip-openvino-ncnn", action="store_true",
                        help="latency: only the ONNX Runtime comparison (no OpenVINO / NNCF / NCNN models)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-ncnn", action="store_true")
    parser.add_argument("--skip-calibration", action="store_true")
    parser.add_argument("--skip-nncf-calibration", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    args = parser.parse_args()
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.ort_threads = [int(t) for t in args.ort_threads.split(",") if t.strip()]

    import warnings

    import torch

    from edgekit.models import ModelConfig, build_model
    from edgekit.quant.calibration import CalibrationWarning

    warnings.filterwarnings("ignore", category=CalibrationWarning)
    torch.manual_seed(0)
    model = build_model(ModelConfig("yolov8", 80, (args.imgsz, args.imgsz), 0.25, 0.33),
                        [f"c{i}" for i in range(80)]).eval()
    command = "python benchmarks/bench_int8.py " + " ".join(sys.argv[1:])
    out: list[str] = [f"command: `{command}`", ""]
    started = time.perf_counter()

    def calib_tensors_for(spec, count: int) -> list[np.ndarray]:
        from edgekit.quant.calibration import calibration_tensors, default_calibration_dir, find_calibration_images

        found = find_calibration_images(default_calibration_dir(), limit=count, force=True, warn=lambda m: None)
        return list(calibration_tensors(found, spec))

    with tempfile.TemporaryDirectory(prefix="bench-int8-") as name:
        tmp = Path(name)
        onnx_path = spec = None
        if not args.skip_latency:
            section = latency_section(args, tmp, model, calib_tensors_for)
            onnx_path, spec = section["onnx"], section["spec"]
            ort = section["ort"]
            out += [f"### ONNX Runtime, {args.imgsz}×{args.imgsz}, threads {', '.join(map(str, ort['threads']))} in one "
                    f"interleaved run of {args.runs} rounds ({ort['calib_tensors']} calibration tensors for both int8 "
                    f"models)", "", f"`uptime` before: `{ort['uptime'][0]}`; after: `{ort['uptime'][1]}`", "",
                    format_ort(ort), ""]
            print("\n".join(out), flush=True)
            out = []
        if not args.skip_latency and not args.skip_openvino_ncnn:
            out += [f"### Latency, {args.imgsz}×{args.imgsz}, {args.threads} threads, {args.runs} interleaved runs "
                    f"(load average {section['load'][0]} before, {section['load'][1]} after)", "",
                    format_latency(section), ""]
            out += [f"- {note}" for note in section["notes"]]
            out += [f"- NNCF quantize on {args.latency_calib_images} tensors took {section['nncf_seconds']:.1f} s", ""]
            out += ["What OpenVINO runs (compiled runtime model, f32 hint):", "", format_layers(section), ""]
            if section["profile"]:
                out += [f"OpenVINO per-layer profile (PERF_COUNT), median over {args.profile_runs} interleaved runs of "
                        f"each layer type's summed real time (load average {load()}):", "",
                        format_profile(section["profile"]), ""]
            print("\n".join(out), flush=True)
            out = []
        if not args.skip_calibration:
            if onnx_path is None:
                from edgekit.convert.chain import export_artifact

                export_artifact(model, tmp / "export")
                onnx_path = tmp / "export" / "model.onnx"
                spec = model.spec
            section = calibration_section(args, onnx_path, spec, tmp)
            out += [f"### Calibration time, {section['count']} images at {args.imgsz}×{args.imgsz}", "",
                    format_calibration(section, spec), ""]
            print("\n".join(out), flush=True)
            out = []
        if not args.skip_accuracy:
            section = accuracy_section(args, tmp)
            h, w = section["size"]
            out += [f"### Accuracy: trained fixture edgekit/zoo/yolov8.pt at {h}×{w}, synthetic val split "
                    f"({section['images']} images), {section['calib']} calibration images (load average {load()})", "",
                    format_accuracy(section), "",
                    "Runtime layers of the two OpenVINO int8 models at this size:", "",
                    format_layers({"layers": section["layers"], "consumers": {}}).split("\n\nFakeQuantize")[0], ""]
            print("\n".join(out), flush=True)
            out = []
    print(f"total {time.perf_counter() - started:.0f} s, load average at end {load()}")


if __name__ == "__main__":
    main()
