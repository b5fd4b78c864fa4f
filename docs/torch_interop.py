#!/usr/bin/env python3
"""Load a DistributedBackprop model (safetensors) into a PyTorch nn.Sequential and predict like `dbp predict`.

    python3 docs/torch_interop.py MODEL.safetensors DATA.csv [--header]

DATA.csv holds feature columns only (no label); --header skips its first row. Prints `dbp predict`'s CSV:
row, predicted class, then one column per class (prob_<class> for a softmax model, output_<class> otherwise).
Needs torch and numpy only: the safetensors file is read here (an 8-byte little-endian header length, a JSON
header naming each tensor's dtype, shape and byte range, then the raw little-endian data).
"""
import csv
import json
import struct
import sys

import numpy as np
import torch
from torch import nn


def read_safetensors(path):
    """Returns ({name: float32 tensor}, metadata dict)."""
    with open(path, "rb") as f:
        (header_length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_length))
        data = f.read()
    metadata = header.pop("__metadata__", {})
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} is {entry['dtype']}, expected F32")
        begin, end = entry["data_offsets"]
        values = np.frombuffer(data[begin:end], dtype="<f4").reshape(entry["shape"])
        tensors[name] = torch.from_numpy(values.copy())
    return tensors, metadata


class Preprocess(nn.Module):
    """x' = (x - shift) * scale, the model's input transform (input.shift, input.scale)."""

    def __init__(self, shift, scale):
        super().__init__()
        self.register_buffer("shift", shift)
        self.register_buffer("scale", scale)

    def forward(self, x):
        return (x - self.shift) * self.scale


ACTIVATIONS = {
    "identity": lambda: nn.Identity(),
    "sigmoid": lambda: nn.Sigmoid(),
    "tanh": lambda: nn.Tanh(),
    "relu": lambda: nn.ReLU(),
    "softmax": lambda: nn.Softmax(dim=1),
}


def load_model(path):
    """The model as nn.Sequential(Preprocess, Linear, activation, Linear, activation, ...) and its class names."""
    tensors, metadata = read_safetensors(path)
    activations = metadata["activations"].split(",")
    layers = [Preprocess(tensors["input.shift"], tensors["input.scale"])]
    for i, activation in enumerate(activations):
        weight, bias = tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"]
        linear = nn.Linear(weight.shape[1], weight.shape[0])  # z = x W^T + b: the file's [out, in] layout is nn.Linear's
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        layers += [linear, ACTIVATIONS[activation]()]
    return nn.Sequential(*layers).eval(), json.loads(metadata["classes_json"]), activations[-1]


def main(argv):
    if len(argv) < 3 or (len(argv) == 4 and argv[3] != "--header") or len(argv) > 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    model, classes, output = load_model(argv[1])
    with open(argv[2], newline="") as f:
        rows = list(csv.reader(f))
    if len(argv) == 4:
        rows = rows[1:]
    x = torch.tensor([[float(v) for v in row] for row in rows if row], dtype=torch.float32)
    with torch.no_grad():
        outputs = model(x)
    prefix = "prob_" if output == "softmax" else "output_"
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(["row", "predicted"] + [prefix + c for c in classes])
    for r, values in enumerate(outputs.tolist()):
        writer.writerow([r, classes[int(np.argmax(values))]] + [repr(np.float32(v).item()) for v in values])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
