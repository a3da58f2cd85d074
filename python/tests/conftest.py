"""Fixtures of the Python package's tests: the committed tiny model and its TransformerLens
references (tests/fixtures, made by tests/fixtures/make_fixtures.py)."""
import json
import os
import pathlib
import struct

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny"
CLEAN = "Michelle Jones was a top-notch student. Michelle"
CORRUPTED = [
    "Michelle Smith was a top-notch student. Michelle",
    "Jessica Jones was a top-notch student. Michelle",
    "Michelle Smith was a top-notch student. Jessica",
]
PAIRS = [{"clean": CLEAN, "corrupted": k, "answer": " Jones", "distractor": " Smith"} for k in CORRUPTED]


def read_safetensors(path):
    """name -> numpy array of a .safetensors file (F32, I32 and U8 only)."""
    raw = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = {"F32": "<f4", "I32": "<i4", "U8": "u1"}[info["dtype"]]
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dtype).reshape(info["shape"])
    return out


@pytest.fixture(scope="session")
def refs():
    return read_safetensors(TINY / "refs.safetensors")


@pytest.fixture(scope="session")
def model():
    import patchbay as pb
    return pb.load(str(TINY), threads=int(os.environ.get("PATCHBAY_TEST_THREADS", "2")))


def backends():
    """cpu, and wgpu (fused and not) where the Rust suite runs it (PATCHBAY_PY_BACKENDS)."""
    return os.environ.get("PATCHBAY_PY_BACKENDS", "cpu").split(",")
