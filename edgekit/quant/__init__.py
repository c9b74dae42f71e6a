"""INT8: calibrate once, emit the one backend-neutral result to every backend.

    calibration.py   image folders -> preprocessed float32 [1,3,H,W] tensors (exactly the runtime's
                     preprocessing), guards (too few images, overlap with the evaluation set)
    collect.py       observes every quantisable layer's input/output tensors over the images, in one pass
    observation.py   the fp32 ONNX graph with each observed tensor's per-image summary computed inside it
                     (min, max, channel means, a sample), run by OpenVINO when installed, else ONNX Runtime
    observers.py     minmax | percentile | entropy (KL) | mse: a histogram -> a clipping range
    result.py        CalibrationResult: activation ranges, per-channel weight scales, layers kept
                     in float; JSON in the artifact, refused when it belongs to another model
    qdq.py           the result -> a Q/DQ ONNX graph (ONNX Runtime, OpenVINO, TensorRT placements)
    ncnn_int8.py     the result -> ncnn int8 .param/.bin (ncnn's own format, no ncnn2int8 needed)
    sensitivity.py   per-layer sensitivity and partial quantisation to a drift budget
"""
