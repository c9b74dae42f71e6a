"""Record the official YOLOX code's state_dict layout and raw outputs, the oracle for edgekit's YOLOX importer.

Runs the upstream ``yolox`` package (Apache-2.0, PyPI ``yolox==0.3.0``) in a throwaway virtualenv; edgekit
itself never imports it. For each scale it writes to ``tests/assets/yolox_official/``:

- ``<scale>_keys.json``: every state_dict key of ``YOLOX(YOLOPAFPN(depth, width, depthwise), YOLOXHead(...))``
  as built by the scale's exp file, in order, with its shape and dtype;
- ``<scale>_outputs.npz`` (only for ``--outputs`` scales): ``state/<key>`` = the BN running statistics (see
  ``_record``) that, with the deterministic weights of :func:`pattern_state_dict` for every other key, make
  the state_dict (:func:`oracle_state_dict`); then, with it loaded, on the input :func:`pattern_input`, in eval mode:
  ``raw_<k>`` = ``torch.cat([reg_preds[k], obj_preds[k], cls_preds[k]], 1)`` captured by forward hooks on the
  three 1x1 prediction convs of level k (the raw logits edgekit's ``yolox`` head kind outputs), ``head_flat`` =
  the head's own eval output with ``decode_in_inference = False`` ([B, N, 5 + nc]: reg raw, sigmoid(obj),
  sigmoid(cls); its own channel concat) and ``decoded`` = the same with ``decode_in_inference = True``
  ([B, N, 5 + nc]: cx, cy, w, h in input pixels, obj, cls probabilities).

The weights are a closed-form function of each key's name and shape (numpy only, no RNG stream), so a test can
rebuild the identical state_dict from the recorded key list without storing megabytes of weights.

Recipe (about 6 GB of wheels; torchvision is needed only because ``yolox.utils`` imports it)::

    python3 -m venv /tmp/yolox_oracle_venv
    /tmp/yolox_oracle_venv/bin/pip install torch torchvision numpy setuptools wheel loguru tabulate psutil thop tqdm \
        opencv-python-headless
    /tmp/yolox_oracle_venv/bin/pip install --no-deps --no-build-isolation yolox==0.3.0
    /tmp/yolox_oracle_venv/bin/python tools/make_yolox_oracle.py
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = REPO_ROOT / "tests" / "assets" / "yolox_official"
# (depth, width, depthwise) of exps/default/yolox_*.py (nano: depthwise=True in its get_model).
SCALES = {
    "yolox_nano": (0.33, 0.25, True),
    "yolox_tiny": (0.33, 0.375, False),
    "yolox_s": (0.33, 0.50, False),
    "yolox_m": (0.67, 0.75, False),
    "yolox_l": (1.0, 1.0, False),
    "yolox_x": (1.33, 1.25, False),
}
NUM_CLASSES = 80
INPUT_SHAPE = (1, 3, 96, 128)  # B, C, H, W: three levels of 12x16, 6x8, 3x4 cells


def _wave(key: str, count: int) -> np.ndarray:
    """``count`` float64 values uniform in [-1, 1), a pure integer hash (splitmix64) of ``key``'s crc32 and the
    element index: exactly reproducible on any platform and numpy version, no RNG stream involved."""
    with np.errstate(over="ignore"):
        z = np.arange(count, dtype=np.uint64) + np.uint64(zlib.crc32(key.encode())) * np.uint64(1 << 32)
        z = z * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53) * 2.0 - 1.0


def pattern_state_dict(shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Deterministic float32 weights for a YOLOX state_dict layout (key -> shape), as numpy arrays.

    Conv weights have gain ~1 (scale sqrt(3 / fan_in) of a [-1, 1] wave), BN statistics and affine
    parameters vary per channel, prediction biases are small: every layer's contribution shows in the output.
    ``num_batches_tracked`` counters are int64 zeros. (The recorded outputs use measured BN running statistics
    instead, see :func:`oracle_state_dict`.)
    """
    weights: dict[str, np.ndarray] = {}
    for key, shape in shapes.items():
        count = int(np.prod(shape)) if shape else 1
        wave = _wave(key, count).reshape(shape)
        if key.endswith("num_batches_tracked"):
            weights[key] = np.zeros(shape, dtype=np.int64)
            continue
        if len(shape) == 4:  # conv weight [out, in / groups, k, k]
            fan_in = int(np.prod(shape[1:]))
            value = wave * np.sqrt(3.0 / fan_in)
            if "_preds." in key:  # head prediction convs: keep logits and exp(reg) in a sane range
                value = value * 0.05
        elif key.endswith("running_var"):
            value = 1.0 + 0.5 * np.abs(wave)
        elif key.endswith("running_mean"):
            value = 0.1 * wave
        elif key.endswith("bn.weight"):
            value = 1.0 + 0.3 * wave
        else:  # bn.bias, conv biases
            value = 0.1 * wave
        weights[key] = value.astype(np.float32)
    return weights


def oracle_state_dict(shapes: dict[str, list[int]], recorded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state_dict the outputs were recorded with: :func:`pattern_state_dict`, BN running statistics
    replaced by the ``state/<key>`` arrays of an ``<scale>_outputs.npz``."""
    weights = pattern_state_dict(shapes)
    for name in recorded:
        if name.startswith("state/"):
            weights[name[len("state/"):]] = np.asarray(recorded[name], dtype=np.float32)
    return weights


def pattern_input(shape: tuple[int, ...] = INPUT_SHAPE) -> np.ndarray:
    """A float32 image-like input with values in 0..255 (YOLOX takes unnormalised BGR pixels)."""
    wave = _wave("input", int(np.prod(shape))).reshape(shape)
    return np.round(127.5 + 127.5 * wave).astype(np.float32)


def _official_model(depth: float, width: float, depthwise: bool):
    import torch.nn as nn
    from yolox.models import YOLOPAFPN, YOLOX, YOLOXHead

    in_channels = [256, 512, 1024]
    backbone = YOLOPAFPN(depth, width, in_channels=in_channels, depthwise=depthwise)
    head = YOLOXHead(NUM_CLASSES, width, in_channels=in_channels, depthwise=depthwise)
    model = YOLOX(backbone, head)
    for module in model.modules():  # the exps' init_yolo
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 1e-3
            module.momentum = 0.03
    return model


def _record(name: str, with_outputs: bool) -> None:
    import torch

    model = _official_model(*SCALES[name])
    state = model.state_dict()
    layout = {key: {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
              for key, value in state.items()}
    lines = [f"{json.dumps(key)}: {json.dumps(entry)}" for key, entry in layout.items()]  # one key a line
    (OUT_DIR / f"{name}_keys.json").write_text("{\n" + ",\n".join(lines) + "\n}\n")
    print(f"{name}: {len(layout)} keys")
    if not with_outputs:
        return
    weights = pattern_state_dict({key: entry["shape"] for key, entry in layout.items()})
    model.load_state_dict({key: torch.from_numpy(value) for key, value in weights.items()}, strict=True)
    x = torch.from_numpy(pattern_input())
    # Fixed BN statistics would let the signal vanish or explode through ~100 layers of closed-form weights, so
    # each BN's running statistics are set to its batch statistics on the pattern input (cumulative average over
    # one batch = that batch), with only the BNs in train mode; they are stored beside the outputs.
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.train()
            module.momentum = None
    with torch.no_grad():
        model(x)
    model.eval()
    statistics = {f"state/{key}": value.numpy().copy() for key, value in model.state_dict().items()
                  if key.endswith(("running_mean", "running_var"))}
    captured: dict[str, torch.Tensor] = {}
    head = model.head
    for kind in ("reg", "obj", "cls"):
        for level, conv in enumerate(getattr(head, f"{kind}_preds")):
            conv.register_forward_hook(lambda _m, _i, out, key=f"{kind}{level}": captured.__setitem__(key, out.detach()))
    arrays: dict[str, np.ndarray] = {"input": x.numpy(), **statistics}
    with torch.no_grad():
        head.decode_in_inference = False
        arrays["head_flat"] = model(x).numpy()
        for level in range(3):
            arrays[f"raw_{level}"] = torch.cat(
                [captured[f"reg{level}"], captured[f"obj{level}"], captured[f"cls{level}"]], 1).numpy()
        head.decode_in_inference = True
        arrays["decoded"] = model(x).numpy()
    np.savez_compressed(OUT_DIR / f"{name}_outputs.npz", **arrays)
    print(f"{name}: outputs {[(k, v.shape) for k, v in arrays.items() if not k.startswith('state/')]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outputs", nargs="*", default=["yolox_nano", "yolox_s"],
                        help="scales whose raw outputs are recorded (default: nano, s)")
    args = parser.parse_args()
    import torch
    import yolox

    print(f"yolox {yolox.__version__}, torch {torch.__version__}")
    torch.set_num_threads(1)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name in SCALES:
        _record(name, name in args.outputs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
