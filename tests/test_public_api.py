"""edgekit's public API (``edgekit/__init__.py``): what DESIGN.md promises is importable from the top and documented."""

import importlib
import inspect

import pytest

import edgekit

#: DESIGN.md's "public API only (load_checkpoint, convert, Detector, validate, …)" and the issue's load_target;
#: convert / validate are named convert_model / validate_artifact (the bare names are the subpackages).
PROMISED = {"load_checkpoint", "convert_model", "convert_onnx", "Detector", "validate_artifact", "load_target"}
NOT_CALLABLE = {"__version__"}


def test_the_promised_names_are_public():
    assert set(edgekit.__all__) >= PROMISED
    assert set(edgekit.__all__) <= set(dir(edgekit))


@pytest.mark.parametrize("name", sorted(set(edgekit.__all__) - NOT_CALLABLE))
def test_each_public_name_imports_and_is_documented(name):
    value = getattr(importlib.import_module("edgekit"), name)
    namespace: dict = {}
    exec(f"from edgekit import {name} as imported", namespace)
    assert namespace["imported"] is value
    assert callable(value)
    doc = inspect.getdoc(value)
    assert doc and len(doc.split()) >= 5, f"edgekit.{name} has no real docstring"
    # public functions carry type hints on their parameters and return value
    if inspect.isfunction(value):
        signature = inspect.signature(value)
        assert signature.return_annotation is not inspect.Signature.empty, name
        assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values()), name


def test_convert_and_validate_stay_the_subpackages():
    import edgekit.convert.chain
    import edgekit.validate.run

    assert inspect.ismodule(edgekit.convert) and inspect.ismodule(edgekit.validate)
    assert edgekit.convert_model is edgekit.convert.chain.convert
    assert edgekit.validate_artifact is edgekit.validate.run.validate_artifact


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'convert_everything'"):
        _ = edgekit.convert_everything
