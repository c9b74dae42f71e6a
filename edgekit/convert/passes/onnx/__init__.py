"""ONNX passes: rewrites of an exported ``onnx.ModelProto``, one pass per module.

The stage that runs them, in order: :mod:`edgekit.convert.passes.pipeline`.
"""
