import json
import os
import struct

import torch
import torch.nn.functional as F
from torch import nn

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def read_safetensors(path):
    """Every tensor of a safetensors file, read with torch alone."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = bytearray(f.read())
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        if end == start:
            t = torch.empty(info["shape"], dtype=dtype)
        else:
            t = torch.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"])
        tensors[name] = t.clone()
    return tensors


def load(folder=None):
    """The exported network with its trained weights, in evaluation mode.

    `folder` holds `model.safetensors` (default: the folder of this file)."""
    folder = folder or os.path.dirname(os.path.abspath(__file__))
    net = Net(**CONFIG)
    net.load_state_dict(read_safetensors(os.path.join(folder, "model.safetensors")))
    return net.eval()


def _put(root, path, module):
    """Registers `module` at the dotted `path` under `root`, creating empty
    containers on the way, so its tensors are named `path.weight` etc., the
    names archsearch gives them. Returns the module."""
    *parents, name = path.split(".")
    for part in parents:
        if part not in root._modules:
            root.add_module(part, nn.Module())
        root = root._modules[part]
    root.add_module(name, module)
    return module
