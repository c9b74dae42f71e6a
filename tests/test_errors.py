"""errors.first_line and errors.did_you_mean: the one helper for each."""

from __future__ import annotations

from edgekit.errors import did_you_mean, first_line


def test_first_line():
    assert first_line(RuntimeError("\n  [ONNXRuntimeError] : 1 : FAIL : bad \nstack line 1\nstack line 2")) \
        == "[ONNXRuntimeError] : 1 : FAIL : bad"
    assert first_line(ValueError("x" * 500)) == "x" * 300 and first_line(ValueError("x" * 500), 10) == "x" * 10
    assert first_line(KeyError()) == "KeyError"          # an empty message still says something
    assert first_line(KeyError(), empty="") == ""
    assert first_line("text\nmore") == "text" and first_line("") == ""


def test_did_you_mean():
    assert did_you_mean("fp61", ["fp16", "fp32", "int8"]) == "; did you mean 'fp16'?"
    assert did_you_mean("zzz", ["fp16", "fp32"]) == ""
    assert did_you_mean("colour", {"color"}) == "; did you mean 'color'?"
    assert did_you_mean("a", []) == ""
