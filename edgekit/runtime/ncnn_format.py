"""ncnn's model format, read and written without torch: ``.param`` text and ``.bin`` weights.

One place for the format, used by the runtime (``runtime/backends/ncnn.py``: the magic, a model's
input and output blobs) and by the int8 writer (``quant/ncnn_int8.py``: every layer's weights and
their byte spans, the layer lines it rewrites). Imports numpy, and ncnn only to walk a ``.bin``.

The format, as read from the ncnn sources (repository Tencent/ncnn):

- ``.param`` (text): ``7767517``, then ``layer_count blob_count``, then one line per layer
  ``type name n_bottoms n_tops bottoms… tops… key=value…``; keys ``<= -23300`` are arrays
  ``-233xx=n,v1,…,vn`` for id ``xx``; a value is a float when it contains ``.`` or ``e``
  (``src/paramdict.cpp``: ``vstr_is_float``).
- ``.bin``: no header or index; every layer, in ``.param`` order, reads its data through
  ``ModelBin::load(w, type)``. In ``src/modelbin.cpp`` (``ModelBinFromDataReader::load``): type 1 is
  ``w`` raw little-endian float32 with no flag; type 0 first reads a 4-byte flag: ``0x01306B47`` =
  fp16 data padded to 4 bytes (``alignSize(w * 2, 4)``), ``0x000D4B38`` = int8 data padded to 4
  bytes (``alignSize(w, 4)``), ``0x0002C056`` = raw float32, any other non-zero flag = a 256-float
  code book followed by ``alignSize(w, 4)`` uint8 indices, flag 0 = raw float32. ncnn's tools write
  int8 weights with ``tools/modelwriter.h`` ``fwrite_weight_tag_data``: the int8 flag, the values,
  zero padding to a 4-byte boundary (:func:`int8_weight_blob`).

How the layers are found in the ``.bin``: rather than re-implementing every layer type's
``load_model``, :func:`read_ncnn_model` runs ncnn's own ``load_param`` + ``load_model`` for each
layer (the ncnn Python binding) against a recording ``ModelBin`` that serves the file's bytes with
the ``modelbin.cpp`` rules above. That gives every layer's exact byte span and blob list, for any
layer type the installed ncnn knows; a ``.bin`` that is truncated, too long or from another
``.param`` is refused with one ModelFileError.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ModelFileError

PARAM_MAGIC = "7767517"
#: ``src/modelbin.cpp`` type-0 flags (read as a native little-endian uint32)
FP16_TAG = 0x01306B47
INT8_TAG = 0x000D4B38
RAW_SCALED_TAG = 0x0002C056
#: layer types whose weights ncnn can hold in int8, with their param ids (num_output, bias_term,
#: weight_data_size) from each layer's ``load_param`` (``src/layer/convolution.cpp``,
#: ``convolutiondepthwise.cpp``, ``innerproduct.cpp``)
WEIGHT_PARAM_IDS = {"Convolution": (0, 5, 6), "ConvolutionDepthWise": (0, 5, 6), "InnerProduct": (0, 1, 2)}
#: ``int8_scale_term = pd.get(8, 0)`` in all three; ``group`` 7 (depthwise); ``dynamic_weight`` 19;
#: ``activation_type`` 9 (Convolution / ConvolutionDepthWise: 0 none, 1 ReLU, 2 LeakyReLU, 3 Clip,
#: 4 Sigmoid, 5 Mish, 6 HardSwish; ``src/layer/fused_activation.h`` — there is no Swish/SiLU)
INT8_SCALE_TERM_ID = 8
GROUP_ID = 7
ACTIVATION_TYPE_ID = 9
DYNAMIC_WEIGHT_ID = 19


# --- the model: .param lines and .bin layout ---------------------------------------------------


@dataclass(frozen=True)
class ParamLayer:
    """One layer line of a ``.param`` file.

    line_index: its index in ``NcnnModel.lines``. params: key -> value text as written
    (array keys are the negative ``-233xx`` ids, values ``n,v1,…``).
    """

    line_index: int
    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, str]

    def get_int(self, key: int, default: int) -> int:
        text = self.params.get(key)
        if text is None:
            return default
        try:
            return int(float(text)) if _is_float(text) else int(text)
        except ValueError:
            raise ModelFileError(f"ncnn layer {self.name!r} ({self.type}): param {key}={text!r} is not a number") from None


@dataclass(frozen=True)
class StoredBlob:
    """One ``ModelBin::load(count, type)`` of a layer: bytes ``[offset, end)`` of the ``.bin``.

    storage: "float32" (type 1, or type 0 with flag 0), "float32-scaled" (flag 0x0002C056),
    "float16", "int8" or "codebook" (256-entry table + uint8 indices).
    values: the decoded data, float32 [count].
    """

    offset: int
    end: int
    count: int
    storage: str
    values: np.ndarray


@dataclass
class NcnnModel:
    """A parsed ``.param`` with the byte layout of its ``.bin`` (see :func:`read_ncnn_model`)."""

    param_path: Path
    bin_path: Path
    lines: list[str]
    layers: list[ParamLayer]
    blobs: dict[str, list[StoredBlob]]
    spans: dict[str, tuple[int, int]]
    data: bytes

    def find(self, name: str) -> ParamLayer | None:
        """The layer called ``name``, or None."""
        return next((layer for layer in self.layers if layer.name == name), None)

    def layer(self, name: str) -> ParamLayer:
        """The layer called ``name``; ModelFileError when there is none."""
        found = self.find(name)
        if found is None:
            raise ModelFileError(f"{self.param_path.name}: no layer named {name!r} in the ncnn .param")
        return found

    def quantizable_layers(self) -> list[ParamLayer]:
        """Convolution / ConvolutionDepthWise / InnerProduct layers with stored (not dynamic) weights."""
        return [layer for layer in self.layers if layer.type in WEIGHT_PARAM_IDS
                and layer.get_int(DYNAMIC_WEIGHT_ID, 0) == 0 and self.blobs[layer.name]]


def read_ncnn_model(param_path: str | Path, bin_path: str | Path) -> NcnnModel:
    """Parse ``param_path`` and locate every layer's data in ``bin_path`` with ncnn's own loaders.

    Raises ModelFileError naming the file (and layer) when either file is malformed, the ``.bin``
    is truncated or has bytes no layer reads, or a layer type is unknown to the installed ncnn.
    """
    param_path, bin_path = Path(param_path), Path(bin_path)
    for path, what in ((param_path, ".param"), (bin_path, ".bin")):
        if not path.is_file():
            raise ModelFileError(f"{path}: ncnn {what} file not found")
    lines, layers = parse_param(param_path)
    # ncnn itself does not need unique layer names (blobs connect layers; pnnx 2026's fp16 output names two Split
    # layers 'splitncnn_0' and ncnn runs it), but this model's tables are keyed by layer name
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise ModelFileError(f"{param_path}: layer name {duplicate!r} appears twice (edgekit's ncnn int8 writer "
                             "needs unique layer names)")
    data = bin_path.read_bytes()
    blobs, spans = _walk_bin(layers, data, param_path, bin_path)
    return NcnnModel(param_path, bin_path, lines, layers, blobs, spans, data)


def _is_float(text: str) -> bool:
    # src/paramdict.cpp vstr_is_float: a '.' or an 'e' makes the value a float
    return "." in text or "e" in text.lower()


def _is_string(text: str) -> bool:
    # src/paramdict.cpp vstr_is_string: starts with a letter or a quote
    return bool(text) and (text[0].isalpha() or text[0] == '"')


def parse_param(path: Path) -> tuple[list[str], list[ParamLayer]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ModelFileError(f"{path}: not a text ncnn .param (binary .param.bin files are not supported)") from None
    if not lines or lines[0].strip() != PARAM_MAGIC:
        raise ModelFileError(f"{path}: not an ncnn text .param (expected the magic {PARAM_MAGIC} on the first line)")
    header = lines[1].split() if len(lines) > 1 else []
    if len(header) != 2 or not all(field.isdigit() for field in header):
        raise ModelFileError(f"{path}: line 2 must be 'layer_count blob_count', got {lines[1] if len(lines) > 1 else ''!r}")
    layers: list[ParamLayer] = []
    for index in range(2, len(lines)):
        fields = lines[index].split()
        if not fields:
            continue
        try:
            n_bottoms, n_tops = int(fields[2]), int(fields[3])
        except (IndexError, ValueError):
            raise ModelFileError(f"{path}: line {index + 1} is not a layer line (type name bottoms tops …)") from None
        blobs_end = 4 + n_bottoms + n_tops
        if n_bottoms < 0 or n_tops < 0 or len(fields) < blobs_end:
            raise ModelFileError(f"{path}: line {index + 1} lists fewer blobs than it declares")
        params: dict[int, str] = {}
        for token in fields[blobs_end:]:
            key, sep, value = token.partition("=")
            try:
                params[int(key)] = value
            except ValueError:
                raise ModelFileError(f"{path}: line {index + 1}: {token!r} is not a key=value parameter") from None
            if not sep:
                raise ModelFileError(f"{path}: line {index + 1}: {token!r} is not a key=value parameter")
        layers.append(ParamLayer(index, fields[0], fields[1], tuple(fields[4:4 + n_bottoms]),
                                 tuple(fields[4 + n_bottoms:blobs_end]), params))
    if len(layers) != int(header[0]):
        raise ModelFileError(f"{path}: declares {header[0]} layers but lists {len(layers)}")
    return lines, layers


def _param_dict(layer: ParamLayer, path: Path) -> Any:
    """The layer's parameters as an ``ncnn.ParamDict``, typed the way ``src/paramdict.cpp`` types them."""
    import ncnn

    pd = ncnn.ParamDict()
    for key, text in layer.params.items():
        try:
            if key <= -23300:
                count_text, *items = text.split(",")
                if int(count_text) != len(items):
                    raise ValueError("array length")
                # ints keep their bit pattern in the Mat (ncnn stores both kinds in 4-byte slots)
                words = [np.float32(float(item)).view(np.int32) if _is_float(item) else np.int32(int(item)) for item in items]
                pd.set(-key - 23300, ncnn.Mat(np.asarray(words, np.int32)).clone() if words else ncnn.Mat())
            elif _is_string(text):
                continue  # string params (shape expressions) cannot be set through the binding; they carry no weights
            elif _is_float(text):
                pd.set(key, float(text))
            else:
                pd.set(key, int(text))
        except ValueError:
            raise ModelFileError(f"{path}: layer {layer.name!r} ({layer.type}): param {key}={text!r} is malformed") from None
    return pd


def _align4(size: int) -> int:
    return (size + 3) & ~3


class _BinReader:
    """Serves ``ModelBin::load(w, type)`` from the file bytes by the ``src/modelbin.cpp`` rules, recording each blob."""

    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset
        self.blobs: list[StoredBlob] = []
        self.error: str | None = None

    def take(self, size: int, what: str) -> bytes:
        if self.offset + size > len(self.data):
            raise _Truncated(f"needs {size} bytes of {what} at offset {self.offset}, the file ends at {len(self.data)}")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def load(self, count: int, load_type: int) -> StoredBlob:
        start = self.offset
        if count < 0:
            raise _Truncated(f"asks for {count} elements")
        if load_type == 1:  # raw float32, no flag
            values, storage = np.frombuffer(self.take(4 * count, "float32 data"), "<f4"), "float32"
        elif load_type == 0:
            flag = self.take(4, "the 4-byte weight flag")
            tag = int.from_bytes(flag, "little")
            if tag == FP16_TAG:
                raw = self.take(_align4(2 * count), "fp16 data")
                values, storage = np.frombuffer(raw[:2 * count], "<f2"), "float16"
            elif tag == INT8_TAG:
                raw = self.take(_align4(count), "int8 data")
                values, storage = np.frombuffer(raw[:count], np.int8), "int8"
            elif tag == RAW_SCALED_TAG:
                values, storage = np.frombuffer(self.take(4 * count, "float32 data"), "<f4"), "float32-scaled"
            elif sum(flag) != 0:  # quantised: 256-float code book + uint8 indices
                table = np.frombuffer(self.take(256 * 4, "code book"), "<f4")
                indices = np.frombuffer(self.take(_align4(count), "code book indices")[:count], np.uint8)
                values, storage = table[indices], "codebook"
            else:
                values, storage = np.frombuffer(self.take(4 * count, "float32 data"), "<f4"), "float32"
        else:
            raise _Truncated(f"asks for ModelBin load type {load_type}, which ncnn does not implement")
        blob = StoredBlob(start, self.offset, int(count), storage, values.astype(np.float32))
        self.blobs.append(blob)
        return blob


class _Truncated(Exception):
    pass


def _recording_model_bin(reader: _BinReader) -> Any:
    import ncnn

    class RecordingModelBin(ncnn.ModelBin):
        def __init__(self) -> None:
            ncnn.ModelBin.__init__(self)

        def load(self, w: int, type: int) -> Any:  # ncnn's own argument names
            if reader.error is not None:
                return ncnn.Mat()
            try:
                blob = reader.load(int(w), int(type))
            except _Truncated as exc:
                reader.error = str(exc)
                return ncnn.Mat()  # the layer's load_model then fails with -100
            # the layer's load_model may compute with the data (BatchNorm does): give it an owned copy
            return ncnn.Mat(np.ascontiguousarray(blob.values)).clone() if blob.count else ncnn.Mat()

    return RecordingModelBin()


def _walk_bin(layers: Sequence[ParamLayer], data: bytes, param_path: Path,
              bin_path: Path) -> tuple[dict[str, list[StoredBlob]], dict[str, tuple[int, int]]]:
    """Each layer's blobs and byte span, from ncnn's own ``load_param`` + ``load_model`` of every layer."""
    from edgekit.runtime.backends.ncnn import NcnnRunner

    NcnnRunner.require()
    import ncnn

    blobs: dict[str, list[StoredBlob]] = {}
    spans: dict[str, tuple[int, int]] = {}
    offset = 0
    for layer in layers:
        op = ncnn.create_layer(layer.type)
        if op is None:
            raise ModelFileError(f"{param_path.name}: layer {layer.name!r} has type {layer.type!r}, which the "
                                   "installed ncnn does not know")
        code = op.load_param(_param_dict(layer, param_path))
        if code != 0:
            raise ModelFileError(f"{param_path.name}: ncnn rejects the parameters of layer {layer.name!r} "
                                   f"({layer.type}, load_param returned {code})")
        reader = _BinReader(data, offset)
        code = op.load_model(_recording_model_bin(reader))
        if reader.error is not None:
            raise ModelFileError(f"{bin_path.name}: truncated or not the weights of {param_path.name}: layer "
                                   f"{layer.name!r} ({layer.type}) {reader.error}")
        if code != 0:
            raise ModelFileError(f"{bin_path.name}: ncnn cannot load the weights of layer {layer.name!r} "
                                   f"({layer.type}, load_model returned {code})")
        blobs[layer.name] = reader.blobs
        spans[layer.name] = (offset, reader.offset)
        offset = reader.offset
    if offset != len(data):
        raise ModelFileError(f"{bin_path.name}: {len(data) - offset} bytes after the last layer's weights "
                               f"(the layers of {param_path.name} read {offset} of {len(data)}): the .bin belongs "
                               "to another .param")
    return blobs, spans


# --- writing ------------------------------------------------------------------------------------


def int8_weight_blob(weight_int8: np.ndarray) -> bytes:
    """tools/modelwriter.h fwrite_weight_tag_data: int8 flag, the int8 values, zero padding to 4 bytes."""
    payload = weight_int8.astype(np.int8).tobytes()
    return INT8_TAG.to_bytes(4, "little") + payload + bytes(_align4(len(payload)) - len(payload))


def float32_blob(values: Any) -> bytes:
    """A ``ModelBin::load(w, 1)`` blob: raw little-endian float32, no flag (biases and int8 scales)."""
    return np.asarray(values, "<f4").reshape(-1).tobytes()


def with_param(line: str, key: int, value: int | float) -> str:
    """``line`` with ``key=value`` set (replacing an existing ``key=`` token), everything else as written."""
    pieces = re.split(r"(\s+)", line)
    words = [i for i, piece in enumerate(pieces) if piece and not piece.isspace()]
    n_bottoms, n_tops = int(pieces[words[2]]), int(pieces[words[3]])
    text = f"{key}={_param_text(value)}"
    for index in words[4 + n_bottoms + n_tops:]:
        if pieces[index].split("=", 1)[0] == str(key):
            pieces[index] = text
            return "".join(pieces)
    return line.rstrip() + f" {text}"


def _param_text(value: int | float) -> str:
    # a float must carry '.' or 'e' to be read as one (vstr_is_float); repr does for every finite float
    return repr(float(value)) if isinstance(value, float) else str(int(value))


# --- a model's inputs and outputs -------------------------------------------------------------


def read_param_io(param_path: str | Path) -> tuple[list[str], list[str]]:
    """(input blobs, output blobs) of an ncnn ``.param`` file, without loading it.

    Inputs are the tops of ``Input`` layers; outputs are blobs some layer produces and no layer
    consumes, in the order they are produced. Raises ModelFileError on a file that is not an ncnn param.
    """
    path = Path(param_path)
    if not path.is_file():
        raise ModelFileError(f"{path}: ncnn .param file not found")
    _, layers = parse_param(path)
    inputs = [top for layer in layers if layer.type == "Input" for top in layer.tops]
    consumed = {bottom for layer in layers for bottom in layer.bottoms}
    produced = [top for layer in layers for top in layer.tops]
    return inputs, [blob for blob in produced if blob not in consumed and blob not in inputs]


def consumers(layers: Sequence[ParamLayer]) -> dict[str, list[ParamLayer]]:
    """blob name -> the layers that read it, in ``.param`` order."""
    found: dict[str, list[ParamLayer]] = {}
    for layer in layers:
        for bottom in layer.bottoms:
            found.setdefault(bottom, []).append(layer)
    return found
