"""Reads the convolution weights out of an ONNX file, without the `onnx` package.

An ONNX file is a protobuf `ModelProto`; only a handful of its fields are needed here (the
graph's Conv nodes in order, their attributes, and the float32 initializers they name), so a
~40-line reader of the protobuf wire format replaces a dependency on `onnx` (and its
protobuf/ml_dtypes pins). Anything unexpected (another data type, a missing initializer)
is an error, never a silent guess.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bgbias.core.errors import BgbiasError

# ModelProto.graph, GraphProto.node/initializer, NodeProto.input/op_type/attribute,
# AttributeProto.name/i/ints, TensorProto.dims/data_type/float_data/name/raw_data.
MODEL_GRAPH, GRAPH_NODE, GRAPH_INITIALIZER = 7, 1, 5
NODE_INPUT, NODE_OP, NODE_ATTRIBUTE = 1, 4, 5
ATTR_NAME, ATTR_INT, ATTR_INTS = 1, 3, 8
TENSOR_DIMS, TENSOR_TYPE, TENSOR_FLOATS, TENSOR_NAME, TENSOR_RAW = 1, 2, 4, 8, 9
FLOAT32 = 1


def _varint(data: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(data: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value): an int for varints, bytes otherwise."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i : i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = data[i : i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _ints(wire: int, value) -> list[int]:
    """A repeated int64 field: one varint, or a packed run of them."""
    if wire == 0:
        return [value]
    out, i = [], 0
    while i < len(value):
        v, i = _varint(value, i)
        out.append(v)
    return out


@dataclass
class ConvNode:
    inputs: list[str]
    attributes: dict[str, list[int]] = field(default_factory=dict)


def _conv_node(data: memoryview) -> ConvNode | None:
    node, op = ConvNode([]), ""
    for number, wire, value in _fields(data):
        if number == NODE_INPUT:
            node.inputs.append(bytes(value).decode())
        elif number == NODE_OP:
            op = bytes(value).decode()
        elif number == NODE_ATTRIBUTE:
            name, ints = "", []
            for n, w, v in _fields(value):
                if n == ATTR_NAME:
                    name = bytes(v).decode()
                elif n in (ATTR_INT, ATTR_INTS):
                    ints += _ints(w, v)
            node.attributes[name] = ints
    return node if op == "Conv" else None


def _tensor(data: memoryview) -> tuple[str, np.ndarray]:
    dims, dtype, name, raw, floats = [], None, "", None, b""
    for number, wire, value in _fields(data):
        if number == TENSOR_DIMS:
            dims += _ints(wire, value)
        elif number == TENSOR_TYPE:
            dtype = value
        elif number == TENSOR_NAME:
            name = bytes(value).decode()
        elif number == TENSOR_RAW:
            raw = bytes(value)
        elif number == TENSOR_FLOATS:
            floats += bytes(value)  # packed floats (wire 2) or one float (wire 5)
    if dtype != FLOAT32:
        return name, np.empty(0)  # shapes and indices for other ops: not needed here
    return name, np.frombuffer(raw if raw is not None else floats, dtype="<f4").reshape(dims).copy()


def read_convolutions(path: Path) -> list[tuple[ConvNode, np.ndarray, np.ndarray | None]]:
    """Every Conv node of the graph in graph (execution) order, with its weight and bias."""
    try:
        model = memoryview(Path(path).read_bytes())
        graphs = [value for number, _, value in _fields(model) if number == MODEL_GRAPH]
        if len(graphs) != 1:
            raise ValueError("no graph")
        nodes, tensors = [], {}
        for number, _, value in _fields(graphs[0]):
            if number == GRAPH_NODE and (node := _conv_node(value)) is not None:
                nodes.append(node)
            elif number == GRAPH_INITIALIZER:
                name, array = _tensor(value)
                tensors[name] = array
        return [(node, tensors[node.inputs[1]], tensors[node.inputs[2]] if len(node.inputs) > 2 else None)
                for node in nodes]
    except (OSError, ValueError, IndexError, KeyError) as exc:
        raise BgbiasError(f"{path}: not an ONNX model whose convolutions can be read ({type(exc).__name__}: {exc})") from None
