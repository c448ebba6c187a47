"""Writes the small, valid seed inputs under fuzz/corpus/<target>/ (run from fuzz/).

Each seed is a file the reader accepts, so the fuzzer starts from the real formats rather than
from random bytes: CIFAR binary records, CIFAR pickles as Python 2 (protocol 2) and Python 3
(protocol 4/5) write them, raw and gzipped IDX pairs, and tiny timm / HF / ResNet safetensors.
"""

import gzip
import os
import pickle
import struct

import numpy as np
from safetensors.numpy import save

rng = np.random.default_rng(0)


def write(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)


def image():
    return rng.integers(0, 256, 3072, dtype=np.uint8)


# CIFAR binary: [label, 3072 planar pixels] (CIFAR-10), [coarse, fine, pixels] (CIFAR-100).
write("cifar_binary", "cifar10-1", bytes([3]) + image().tobytes())
write("cifar_binary", "cifar100-1", bytes([7, 42]) + image().tobytes())

# CIFAR pickles: the official files are Python 2 pickles with bytes keys.
batch10 = {
    b"batch_label": b"training batch 1 of 5",
    b"labels": [3],
    b"data": image().reshape(1, 3072),
    b"filenames": [b"cat_s_000001.png"],
}
write("cifar_pickle", "cifar10-batch-p2", pickle.dumps(batch10, protocol=2))
batch100 = {
    "fine_labels": np.array([42], dtype=np.int64),
    "coarse_labels": [7],
    "data": image().reshape(1, 3072),
}
write("cifar_pickle", "cifar100-batch-p4", pickle.dumps(batch100, protocol=4))
meta10 = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
write("cifar_pickle", "cifar10-meta-p2", pickle.dumps(meta10, protocol=2))
meta100 = {
    "fine_label_names": [f"fine{i}" for i in range(100)],
    "coarse_label_names": [f"coarse{i}" for i in range(20)],
}
write("cifar_pickle", "cifar100-meta-p5", pickle.dumps(meta100, protocol=5))


# IDX: the fuzz input is a little-endian u16 split point, the image file, the label file.
def idx(magic, dims, data):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + data


images = idx(0x803, [2, 3, 3], rng.integers(0, 256, 18, dtype=np.uint8).tobytes())
labels = idx(0x801, [2], bytes([1, 9]))
write("idx", "raw", struct.pack("<H", len(images)) + images + labels)
gz_images = gzip.compress(images, mtime=0)
write("idx", "gzip", struct.pack("<H", len(gz_images)) + gz_images + gzip.compress(labels, mtime=0))


# safetensors: a 1-block ViT of width 4 on 2x2 patches of a 4x4 image, 3 classes.
def f(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def timm_vit(dtype):
    d, mlp = 4, 8
    sd = {
        "patch_embed.proj.weight": f(d, 3, 2, 2, dtype=dtype),
        "patch_embed.proj.bias": f(d, dtype=dtype),
        "cls_token": f(1, 1, d, dtype=dtype),
        "pos_embed": f(1, 5, d, dtype=dtype),
        "norm.weight": f(d, dtype=dtype),
        "norm.bias": f(d, dtype=dtype),
        "head.weight": f(3, d, dtype=dtype),
        "head.bias": f(3, dtype=dtype),
    }
    for n, shape in [
        ("norm1.weight", (d,)), ("norm1.bias", (d,)), ("norm2.weight", (d,)), ("norm2.bias", (d,)),
        ("attn.qkv.weight", (3 * d, d)), ("attn.qkv.bias", (3 * d,)),
        ("attn.proj.weight", (d, d)), ("attn.proj.bias", (d,)),
        ("mlp.fc1.weight", (mlp, d)), ("mlp.fc1.bias", (mlp,)),
        ("mlp.fc2.weight", (d, mlp)), ("mlp.fc2.bias", (d,)),
    ]:
        sd[f"blocks.0.{n}"] = f(*shape, dtype=dtype)
    return sd


write("safetensors", "timm-vit-f32", save(timm_vit(np.float32)))


def hf_vit(dtype):
    d, mlp = 4, 8
    sd = {
        "vit.embeddings.patch_embeddings.projection.weight": f(d, 3, 2, 2, dtype=dtype),
        "vit.embeddings.patch_embeddings.projection.bias": f(d, dtype=dtype),
        "vit.embeddings.cls_token": f(1, 1, d, dtype=dtype),
        "vit.embeddings.position_embeddings": f(1, 5, d, dtype=dtype),
        "vit.layernorm.weight": f(d, dtype=dtype),
        "vit.layernorm.bias": f(d, dtype=dtype),
        "classifier.weight": f(3, d, dtype=dtype),
        "classifier.bias": f(3, dtype=dtype),
    }
    for n, shape in [
        ("layernorm_before.weight", (d,)), ("layernorm_before.bias", (d,)),
        ("layernorm_after.weight", (d,)), ("layernorm_after.bias", (d,)),
        ("attention.attention.query.weight", (d, d)), ("attention.attention.query.bias", (d,)),
        ("attention.attention.key.weight", (d, d)), ("attention.attention.key.bias", (d,)),
        ("attention.attention.value.weight", (d, d)), ("attention.attention.value.bias", (d,)),
        ("attention.output.dense.weight", (d, d)), ("attention.output.dense.bias", (d,)),
        ("intermediate.dense.weight", (mlp, d)), ("intermediate.dense.bias", (mlp,)),
        ("output.dense.weight", (d, mlp)), ("output.dense.bias", (d,)),
    ]:
        sd[f"vit.encoder.layer.0.{n}"] = f(*shape, dtype=dtype)
    return sd


write("safetensors", "hf-vit-f16", save(hf_vit(np.float16)))


def resnet(dtype):
    w, sd = 2, {"conv1.weight": f(2, 3, 3, 3, dtype=dtype), "fc.weight": f(3, 2, dtype=dtype)}
    sd["fc.bias"] = f(3, dtype=dtype)
    for n in ["weight", "bias", "running_mean", "running_var"]:
        sd[f"bn1.{n}"] = f(w, dtype=dtype)
    for s in range(1, 5):
        sd[f"layer{s}.0.conv1.weight"] = f(w, w, 3, 3, dtype=dtype)
        sd[f"layer{s}.0.conv2.weight"] = f(w, w, 3, 3, dtype=dtype)
        for bn in ["bn1", "bn2"]:
            for n in ["weight", "bias", "running_mean", "running_var"]:
                sd[f"layer{s}.0.{bn}.{n}"] = f(w, dtype=dtype)
    return sd


write("safetensors", "timm-resnet-f64", save(resnet(np.float64)))
