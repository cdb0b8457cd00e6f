"""safetensors files with numpy alone, and the bf16 / fp8 e4m3 encodings.

A safetensors file is an 8-byte little-endian header length N, N bytes of
JSON ({name: {"dtype", "shape", "data_offsets": [begin, end]}}, offsets
relative to the data section), then the data.  The header is padded with
spaces to a multiple of 8 so the data section stays aligned.
"""
import json
import struct

import numpy as np

ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I64": 8, "I32": 4, "U8": 1}


def f32_to_bf16_bits(a):
    """Round to nearest even, as torch does; returns uint16 bits."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def bf16_bits_to_f32(b):
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def e4m3_table():
    """The value of every e4m3fn code (0x7f / 0xff are NaN)."""
    vals = np.zeros(256, dtype=np.float64)
    for c in range(256):
        s, e, m = c >> 7, (c >> 3) & 15, c & 7
        if e == 15 and m == 7:
            v = np.nan
        elif e == 0:
            v = m / 8 * 2.0 ** -6
        else:
            v = (1 + m / 8) * 2.0 ** (e - 7)
        vals[c] = -v if s else v
    return vals


def f32_to_e4m3_bits(a):
    """Nearest e4m3fn code (values clipped to +-448), via the sorted table."""
    tab = e4m3_table()
    codes = np.array([c for c in range(256) if not np.isnan(tab[c])])
    order = np.argsort(tab[codes], kind="stable")
    sv, sc = tab[codes][order], codes[order]
    x = np.clip(np.asarray(a, dtype=np.float64), -448, 448).ravel()
    i = np.clip(np.searchsorted(sv, x), 1, len(sv) - 1)
    pick = np.where(np.abs(x - sv[i - 1]) <= np.abs(sv[i] - x), i - 1, i)
    return sc[pick].astype(np.uint8).reshape(np.shape(a))


def write_safetensors(path, tensors, metadata=None):
    """tensors: {name: (dtype string, numpy array of the stored bits/values)}."""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dt, arr) in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dt, "shape": list(np.shape(arr)), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as fp:
        fp.write(struct.pack("<Q", len(h)))
        fp.write(h)
        for b in blobs:
            fp.write(b)


def read_safetensors(path):
    """{name: float64 array} for float dtypes (fp8 decoded, no scale applied)."""
    with open(path, "rb") as fp:
        data = fp.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        raw = data[base + b:base + e]
        dt, shape = info["dtype"], info["shape"]
        if dt == "F32":
            a = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        elif dt == "F16":
            a = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        elif dt == "BF16":
            a = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2")).astype(np.float64)
        elif dt == "F8_E4M3":
            a = e4m3_table()[np.frombuffer(raw, dtype=np.uint8)]
        else:
            raise ValueError(f"{path}: {name}: dtype {dt}")
        out[name] = a.reshape(shape)
    return out
