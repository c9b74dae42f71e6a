"""Graph passes: ONNX node count and latency of the untouched export vs the default (passes) export.

Per built-in family (width 0.25, depth 0.33, 80 classes, random weights with BatchNorm statistics
calibrated on random images, see ``calibrate_batchnorm``) two ONNX files are made:

- **no passes**: ``torch.onnx.export(..., do_constant_folding=False, training=PRESERVE)`` of the model
  as built — BatchNorm nodes and the three RepVGG branches stay in the graph (torch's legacy exporter
  would otherwise fold eval-mode BN into the convs itself);
- **default**: the module passes, edgekit's ``export_onnx`` and the ONNX passes, as ``edgekit export``
  runs them.

Both are timed with ONNX Runtime (CPU EP, default graph optimisation, ``--threads`` intra-op threads)
and OpenVINO (CPU, ``INFERENCE_PRECISION_HINT=f32``, ``--threads`` inference threads, latency hint)
on the same input. The four measurements are interleaved run by run (in a random order per round,
ONNX Runtime without spin-waiting) so machine-load drift hits all of them alike; the table reports
medians and speedup = no-passes median / default median, measured in this one run. Note: both
runtimes fold BN into convs (and adds into conv post-ops) on their own, so BN folding alone barely
moves latency; merging the RepVGG branches (3 convs -> 1) is what they cannot do themselves.

    python benchmarks/bench_passes.py [--imgsz 640] [--runs 30] [--threads 2] [--families yolov6 yolov5 ...]

``--check-cost CHECKPOINT [--baseline-tree DIR]``: instead, the cost of the module stage's equivalence
checks in a conversion — ``run_module_passes`` on the checkpoint at the chain's check size
(``PASS_CHECK_SIZE``), CPU and wall seconds per run, each run in a fresh process; with
``--baseline-tree`` (an edgekit source tree, e.g. ``git archive REV edgekit | tar -x -C DIR``) the runs
alternate between that tree and this one, round by round, and the table gives the ratio:

    python benchmarks/bench_passes.py --check-cost ../shared/models/ultralytics/yolov8n-coco8.pt --baseline-tree /tmp/old --rounds 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import interleaved


def calibrate_batchnorm(model, seed: int = 0, size: int = 160, batches: int = 2):
    """BatchNorm running statistics measured on random images (cumulative average of training-mode
    forwards), with random gamma / beta: activations stay normalised through the network as in a
    trained model. With PyTorch's default init they fade to (near-)zero in most families, which makes
    the equivalence checks blind and can put denormal numbers on the timed path."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in batchnorms:
            bn.reset_running_stats()
            bn.momentum = None
            bn.weight.uniform_(0.5, 1.5, generator=generator)
            bn.bias.normal_(0.0, 0.2, generator=generator)
        model.train()
        for _ in range(batches):
            model(torch.rand(4, 3, size, size, generator=generator))
    for bn in batchnorms:
        bn.momentum = 0.1
    return model.eval()


def export_untouched(model, size: int, path: Path) -> None:
    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), buffer, dynamo=False, opset_version=17,
                          input_names=[model.spec.input_name], output_names=list(model.spec.head.output_names),
                          do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    onnx.save(onnx.load_from_string(buffer.getvalue()), str(path))


def export_default(model, size: int, path: Path) -> list:
    """Module passes -> edgekit export -> ONNX passes; returns the pass records."""
    import onnx
    import torch

    from edgekit.convert.export import export_onnx
    from edgekit.convert.passes import run_module_passes, run_onnx_passes

    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    rewritten, module_records = run_module_passes(model, example)
    export_onnx(rewritten, model.spec, path)
    final, onnx_records = run_onnx_passes(onnx.load(str(path)), example.numpy())
    onnx.save(final, str(path))
    return module_records + onnx_records


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # No spin-waiting after a run: with four sessions interleaved, a spinning pool would steal the
    # cores from whichever session runs next and bias the comparison.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def openvino_request(path: Path, threads: int):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                     "INFERENCE_NUM_THREADS": threads,
                                                     "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path)).graph.node)


def measure(runners: dict, x: np.ndarray, runs: int, warmup: int = 3, seed: int = 0) -> dict[str, float]:
    """Median milliseconds per runner, interleaved (``benchmarks.timing``: a fresh seeded random order each round
    and a settle pause per call, so that a predecessor's thread pool winding down costs no runner systematically)."""
    times = interleaved({key: (lambda runner=runner: runner(x)) for key, runner in runners.items()}, runs, warmup,
                        seed=seed)
    return {key: statistics.median(values) for key, values in times.items()}


_CHECK_COST = """
import json, sys, time
import torch
from edgekit.convert.chain import PASS_CHECK_SIZE
from edgekit.convert.passes import run_module_passes
from edgekit.models.loading import load_checkpoint
from edgekit.runtime.preprocess import probe_input
torch.set_num_threads(int(sys.argv[2]))
model = load_checkpoint(sys.argv[1]).eval()
size = tuple(min(side, PASS_CHECK_SIZE) // 32 * 32 or 32 for side in model.spec.input_size)
example = torch.from_numpy(probe_input(model.spec.with_input_size(size), seed=1))
cpu, wall = time.process_time(), time.perf_counter()
_, records = run_module_passes(model, example)
print(json.dumps({"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall, "size": size,
                  "max_rel": max(r.max_rel for r in records), "rewrites": sum(r.rewrites for r in records)}))
"""


def check_cost(checkpoint: str, baseline: str | None, rounds: int, threads: int) -> None:
    """Module-stage check cost per run, this tree vs ``baseline`` (alternating, fresh process per run)."""
    import json
    import os
    import subprocess

    trees = {"this tree": str(Path(__file__).resolve().parents[1])}
    if baseline:
        trees = {"baseline": str(Path(baseline).resolve()), **trees}
    results: dict[str, list[dict]] = {name: [] for name in trees}
    for round_index in range(rounds):
        order = list(trees) if round_index % 2 == 0 else list(reversed(trees))
        for name in order:
            env = {**os.environ, "PYTHONPATH": trees[name]}
            out = subprocess.run([sys.executable, "-c", _CHECK_COST, checkpoint, str(threads)], env=env, check=True,
                                 capture_output=True, text=True, cwd=trees[name]).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {round_index + 1} {name}: {results[name][-1]}", file=sys.stderr)
    print(f"command: python benchmarks/bench_passes.py --check-cost {checkpoint}"
          + (f" --baseline-tree {baseline}" if baseline else "") + f" --rounds {rounds} --threads {threads}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print("| tree | CPU s (median) | wall s (median) | max pass rel err | rewrites |")
    print("|---|---|---|---|---|")
    medians = {}
    for name, runs in results.items():
        medians[name] = (statistics.median(r["cpu"] for r in runs), statistics.median(r["wall"] for r in runs))
        print(f"| {name} | {medians[name][0]:.2f} | {medians[name][1]:.2f} | {max(r['max_rel'] for r in runs):.1e} "
              f"| {runs[0]['rewrites']} |")
    if baseline:
        print()
        print(f"this tree / baseline: CPU {medians['this tree'][0] / medians['baseline'][0]:.2f}x, "
              f"wall {medians['this tree'][1] / medians['baseline'][1]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", nargs="*", default=None)
    parser.add_argument("--check-cost", metavar="CHECKPOINT", default=None,
                        help="time the module stage's equivalence checks on CHECKPOINT instead")
    parser.add_argument("--baseline-tree", default=None, help="with --check-cost: an edgekit tree to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.check_cost:
        check_cost(args.check_cost, args.baseline_tree, args.rounds, args.threads)
        return

    import torch

    from edgekit.models import ModelConfig, build_model, family_names

    torch.set_num_threads(args.threads)
    families = args.families or family_names()
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, args.imgsz, args.imgsz)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            torch.manual_seed(0)
            model = calibrate_batchnorm(build_model(ModelConfig(family, 80, (args.imgsz, args.imgsz))))
            plain, passed = Path(tmp) / f"{family}_plain.onnx", Path(tmp) / f"{family}_passes.onnx"
            export_untouched(model, args.imgsz, plain)
            records = export_default(model, args.imgsz, passed)
            runners = {
                "ort plain": ort_session(plain, args.threads), "ort passes": ort_session(passed, args.threads),
                "ov plain": openvino_request(plain, args.threads), "ov passes": openvino_request(passed, args.threads),
            }
            ms = measure(runners, x, args.runs)
            worst = max(r.max_rel for r in records)
            rows.append((family, node_count(plain), node_count(passed), ms, worst))
            print(f"{family}: done ({', '.join(f'{k} {v:.1f} ms' for k, v in ms.items())})", file=sys.stderr)

    print(f"command: python benchmarks/bench_passes.py --imgsz {args.imgsz} --runs {args.runs} --threads {args.threads}"
          + (f" --families {' '.join(families)}" if args.families else ""))
    print(f"input 1x3x{args.imgsz}x{args.imgsz} float32; models width 0.25 / depth 0.33, 80 classes, random weights "
          f"(BN statistics calibrated on random images); "
          f"medians of {args.runs} interleaved runs; speedup = no-passes / default")
    print()
    print("| family | ONNX nodes no-passes | ONNX nodes default | ORT ms no-passes | ORT ms default | ORT speedup "
          "| OpenVINO ms no-passes | OpenVINO ms default | OpenVINO speedup | max pass rel err* |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for family, plain_nodes, passed_nodes, ms, worst in rows:
        print(f"| {family} | {plain_nodes} | {passed_nodes} | {ms['ort plain']:.1f} | {ms['ort passes']:.1f} "
              f"| {ms['ort plain'] / ms['ort passes']:.2f}x | {ms['ov plain']:.1f} | {ms['ov passes']:.1f} "
              f"| {ms['ov plain'] / ms['ov passes']:.2f}x | {worst:.1e} |")
    print()
    print("* largest per-pass equivalence error of the default export (module passes checked in float64, "
          "ONNX passes in float32 with ONNX Runtime)")


if __name__ == "__main__":
    main()
