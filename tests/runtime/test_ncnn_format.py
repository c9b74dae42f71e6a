"""edgekit.runtime.ncnn_format on hand-written .param files: what the runner accepts is what ncnn accepts."""

from __future__ import annotations

import pytest

from edgekit.errors import ModelFileError
from edgekit.runtime.ncnn_format import PARAM_MAGIC, read_ncnn_model, read_param_io

# pnnx (2026) writes fp16 models of an Ultralytics ONNX with two Split layers both named 'splitncnn_0'; ncnn
# connects layers by blob names and runs it. The runner reads such a file; the int8 writer (tables keyed by layer
# name) refuses it in one line.
DUPLICATE_NAMES = f"""{PARAM_MAGIC}
4 5
Input                    in0                      0 1 in0
Split                    splitncnn_0              1 2 in0 a b
Split                    splitncnn_0              1 2 a c d
BinaryOp                 add_0                    3 1 b c d out0 0=0
"""


def test_the_runner_reads_a_param_whose_layer_names_repeat(tmp_path):
    param = tmp_path / "model.ncnn.param"
    param.write_text(DUPLICATE_NAMES)
    assert read_param_io(param) == (["in0"], ["out0"])


def test_the_int8_writer_refuses_repeated_layer_names_in_one_line(tmp_path):
    param = tmp_path / "model.ncnn.param"
    param.write_text(DUPLICATE_NAMES)
    (tmp_path / "model.ncnn.bin").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"layer name 'splitncnn_0' appears twice \(edgekit's ncnn int8 writer"):
        read_ncnn_model(param, tmp_path / "model.ncnn.bin")
