"""Whether the ONNX Runtime int8 graph requantises the head convs' outputs (issue 15).

ONNX Runtime runs a Q/DQ graph in integer kernels only where every input and output of an op is quantised. The
head convs' outputs are the raw tensors the decoder reads (class logits, box offsets or distributions); leaving them
float keeps the finest numbers where they matter, but each such conv then runs as a float Conv after a
DequantizeLinear, and what follows it in float: on the yolov8 body that was 5-7 % of the int8 latency, nearly all
of the gap to ``quantize_static`` (benchmarks/RESULTS.md, "INT8 speed").

What the 8-bit grid over those outputs costs depends on the model and on the images, and calibration images do not
show it: measured on the bundled natural photos, requantised heads moved the real FastestDet's decoded scores by
nothing (mean |Δscore| 0.0226 → 0.0227 above 1/4 of the threshold, 507 vs 508 of 598 boxes matched), while on its
five busy street photos they cost 3-5 % of its fp32 boxes at the same float layers. So the heads are requantised
only when the user said how much drift is acceptable (``--drift-budget``) and the judge of that budget (mAP on
``--drift-data``, or agreement on held-out images) measures the ONNX Runtime graph with requantised heads, at the
layers the search keeps float, within it:

    requantise  iff  the budget is met  and  drift(ONNX Runtime Q/DQ, heads requantised) <= budget

Otherwise they stay float (the default). The choice is recorded in the calibration result
(``quantize_head_outputs``, with the reason in ``notes.head_outputs``) so a reused cache builds the same graph, and
the int8 agreement gate still judges the built model.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from edgekit.quant.placement import FUSED_UINT8
from edgekit.quant.qdq import head_conv_outputs, write_qdq
from edgekit.quant.result import HEAD_CHOICE_KEYS, REQUANTISED_REASON, CalibrationResult
from edgekit.quant.sensitivity import DriftJudge, PartialQuantization


@dataclass(frozen=True)
class HeadOutputChoice:
    """``CalibrationResult.quantize_head_outputs`` and why (the manifest's ``info.int8.head_outputs``, the cache's
    ``notes.head_outputs``). ``drift``: the judged drift of ONNX Runtime's graph with requantised heads (points;
    None when not judged), ``budget`` the ``--drift-budget`` it was judged against."""

    quantize: bool
    reason: str
    drift: float | None = None
    budget: float | None = None

    def summary(self) -> dict:
        return dict(zip(HEAD_CHOICE_KEYS, (self.quantize, self.reason, self.drift, self.budget)))


#: the record of a calibration without ``--drift-budget``
WITHOUT_BUDGET = HeadOutputChoice(False, "head outputs kept float (requantised only within a --drift-budget)")


def requantisable_heads(model: onnx.ModelProto, result: CalibrationResult) -> set[str]:
    """Outputs of the int8 head convs that are not graph outputs themselves: those the choice changes (a head conv
    that writes a graph output directly, as classic YOLOv5's Detect does, stays float either way, and so does a head
    conv ``result`` keeps in float)."""
    graph_outputs = {output.name for output in model.graph.output}
    int8_outputs = {layer.output for layer in result.quantized_layers}
    return (head_conv_outputs(model) - graph_outputs) & int8_outputs


def choose_head_outputs(onnx_path: str | Path, partial: PartialQuantization, judge: DriftJudge) -> HeadOutputChoice:
    """After the ``--drift-budget`` search (``partial``): judge ONNX Runtime's graph with the search's float layers
    and requantised heads by the search's own judge, and requantise if that is within the budget.

    onnx_path: the fp32 graph ``partial.result`` was computed on."""
    onnx_path = Path(onnx_path)
    if not partial.met:
        return HeadOutputChoice(False, f"head outputs kept float: the {partial.budget:g}-point drift budget was not "
                                       "met with float heads", budget=float(partial.budget))
    if not requantisable_heads(onnx.load(str(onnx_path), load_external_data=False), partial.result):
        return HeadOutputChoice(False, "no int8 head conv output between the body and the graph outputs")
    with tempfile.TemporaryDirectory(prefix="edgekit-head-outputs-") as tmp:
        path = Path(tmp) / "requantised_heads.onnx"
        write_qdq(onnx_path, replace(partial.result, quantize_head_outputs=True), FUSED_UINT8, path)
        drift = judge.drift(path)
    within = drift <= partial.budget  # False for a NaN drift
    verdict = REQUANTISED_REASON if within else "head outputs kept float"
    return HeadOutputChoice(within, f"{verdict}: ONNX Runtime's graph with them requantised drifts "
                                    f"{drift:.2f} points (budget {partial.budget:g})",
                            round(float(drift), 4), float(partial.budget))


def cached_choice(result: CalibrationResult) -> HeadOutputChoice:
    """The choice a calibration cache records (``notes.head_outputs``: ``CalibrationResult.check_values`` refused the
    cache on load unless it is the record calibration writes and agrees with the flag), or, for a cache written
    before the choice existed (no record, flag false), heads float and why."""
    recorded = result.notes.get("head_outputs")
    if recorded is None:
        return HeadOutputChoice(False, "head outputs kept float: the calibration cache predates the choice")
    return HeadOutputChoice(result.quantize_head_outputs, recorded["reason"], recorded["drift"], recorded["budget"])
