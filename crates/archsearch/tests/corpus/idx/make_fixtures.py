#!/usr/bin/env python3
"""Writes the IDX fixtures of tests/corpus.rs (run from this folder).

`valid/` is a tiny, well-formed Fashion-MNIST-shaped data set (20 training
and 10 test images of 4x4, gzipped training files, plain test files). Every
other folder holds the file(s) that replace their namesakes in a copy of
`valid/` to make one malformed data set; `NAME.missing` removes `NAME` (and
`NAME.gz`). The test copies `valid/`, applies a case folder, and points a
training study's `data_dir` at the result.
"""
import gzip
import os
import shutil
import struct

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


def idx(dims, body, element=0x08):
    head = bytes([0, 0, element, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    return head + bytes(body)


def gz(data):
    # mtime 0: the same bytes on every run.
    return gzip.compress(data, mtime=0)


def images(n, h=4, w=4):
    return [(i * 7) % 251 for i in range(n * h * w)]


def labels(n):
    return [i % 10 for i in range(n)]


def write(folder, name, data):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    os.chdir(here)
    for entry in os.listdir("."):
        if os.path.isdir(entry):
            shutil.rmtree(entry)

    write("valid", TRAIN_IMAGES + ".gz", gz(idx([20, 4, 4], images(20))))
    write("valid", TRAIN_LABELS + ".gz", gz(idx([20], labels(20))))
    write("valid", TEST_IMAGES, idx([10, 4, 4], images(10)))
    write("valid", TEST_LABELS, idx([10], labels(10)))

    cases = {
        # The first four bytes are not 0, 0, type, dimensions.
        "bad-magic": [(TRAIN_IMAGES + ".gz", gz(b"hello world, this is not an IDX file"))],
        "empty-file": [(TEST_LABELS, b"")],
        # 0x0D: 32-bit floats, which the readers do not take.
        "wrong-element-type": [(TRAIN_IMAGES + ".gz", gz(idx([20, 4, 4], [0] * 20 * 16 * 4, element=0x0D)))],
        # Three dimensions announced, one and a half given.
        "truncated-header": [(TEST_IMAGES, bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0]))],
        "zero-dimensions": [(TRAIN_LABELS + ".gz", gz(bytes([0, 0, 8, 0])))],
        "truncated-data": [(TRAIN_IMAGES + ".gz", gz(idx([20, 4, 4], images(20)[:100])))],
        "trailing-data": [(TRAIN_IMAGES + ".gz", gz(idx([20, 4, 4], images(20) + [0] * 10)))],
        # 2^32-1 cubed overflows a 64-bit byte count.
        "huge-dimensions": [(TRAIN_IMAGES + ".gz", gz(idx([0xFFFFFFFF] * 3, [])))],
        # Images as [N, H*W], labels as [N, 1].
        "images-wrong-dimension-count": [(TRAIN_IMAGES + ".gz", gz(idx([20, 16], images(20))))],
        "labels-wrong-dimension-count": [(TRAIN_LABELS + ".gz", gz(idx([20, 1], labels(20))))],
        "gzip-truncated": [(TRAIN_IMAGES + ".gz", gz(idx([20, 4, 4], images(20)))[:60])],
        "gzip-bad-crc": [(TRAIN_LABELS + ".gz", corrupt_crc(gz(idx([20], labels(20)))))],
        "label-count-mismatch": [(TRAIN_LABELS + ".gz", gz(idx([19], labels(19))))],
        "label-out-of-range": [(TEST_LABELS, idx([10], labels(9) + [12]))],
        "test-resolution-mismatch": [
            (TEST_IMAGES, idx([10, 5, 5], images(10, 5, 5))),
        ],
        "no-images": [
            (TRAIN_IMAGES + ".gz", gz(idx([0, 4, 4], []))),
            (TRAIN_LABELS + ".gz", gz(idx([0], []))),
        ],
        "zero-size-images": [(TEST_IMAGES, idx([10, 0, 4], []))],
        "missing-labels": [(TRAIN_LABELS + ".missing", b"")],
    }
    for case, files in cases.items():
        for name, data in files:
            write(case, name, data)


def corrupt_crc(data):
    # The gzip trailer is CRC-32 then size; flip the CRC's bits.
    b = bytearray(data)
    for i in range(len(b) - 8, len(b) - 4):
        b[i] ^= 0xFF
    return bytes(b)


if __name__ == "__main__":
    main()
