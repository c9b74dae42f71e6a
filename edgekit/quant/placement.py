"""Where Q/DQ pairs go in an int8 graph, so that ONNX Runtime reproduces a backend's int8 arithmetic.

A placement is declared by the backend's builder (``BackendBuilder.qdq_placement``); the three below are
the arithmetic of the built-in backends, for a new backend to reuse (or it declares its own
:class:`QdqPlacement`). The writer that reads them is ``edgekit.quant.qdq``; its module docstring explains
each one. Plain data: importing this module needs neither onnx nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QdqPlacement:
    name: str
    activation_type: str      # "uint8" (affine) or "int8" (symmetric)
    quantize_outputs: bool    # also Q/DQ each quantised conv's output
    quantize_bias: bool       # int32 bias through DequantizeLinear (needed by ORT's fusion)
    producer_side: bool = False  # Q/DQ where the activation is produced, not at each conv input
    integer_ops: bool = False    # every activation in the integer region quantised at its producer (qdq.INTEGER_OPS)


#: ONNX Runtime's QDQ fusions: uint8 activations quantised where they are produced, so every DQ(x), DQ(w), DQ(b)
#: -> Conv -> Q(y) unit becomes QLinearConv and Sigmoid / Mul / Add / Concat / MaxPool / Resize / Split run on uint8
FUSED_UINT8 = QdqPlacement("onnxruntime", "uint8", quantize_outputs=True, quantize_bias=True, integer_ops=True)
#: OpenVINO's u8 x i8 convolutions: one Q/DQ right after each producing tensor, float bias
PRODUCER_SIDE_UINT8 = QdqPlacement("openvino", "uint8", quantize_outputs=False, quantize_bias=False,
                                   producer_side=True)
#: symmetric int8 inputs (zero point 0), float outputs and bias: TensorRT's explicit quantisation, ncnn's int8 conv
SYMMETRIC_INT8 = QdqPlacement("tensorrt", "int8", quantize_outputs=False, quantize_bias=False)
