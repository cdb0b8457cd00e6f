"""A GGUF file's key/value metadata, read from the published layout (the gguf
package's reader takes about a minute on a 256k-token vocabulary)."""
import struct

import numpy as np


def gguf_metadata(path):
    """{key: value}: strings as str, arrays of strings as lists of str, numeric
    arrays as lists of numbers."""
    with open(path, "rb") as f:
        buf = f.read()
    scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
              11: "<q", 12: "<d"}
    dtype = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
             10: "<u8", 11: "<i8", 12: "<f8"}
    assert buf[:4] == b"GGUF", path
    pos = 4 + 4 + 8
    (n_kv,) = struct.unpack_from("<Q", buf, pos)
    pos += 8

    def string(pos):
        (n,) = struct.unpack_from("<Q", buf, pos)
        return buf[pos + 8:pos + 8 + n].decode("utf-8"), pos + 8 + n

    def value(vt, pos):
        if vt == 8:
            return string(pos)
        if vt == 9:
            et, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if et == 8:
                out = []
                for _ in range(count):
                    v, pos = string(pos)
                    out.append(v)
                return out, pos
            arr = np.frombuffer(buf, dtype=dtype[et], count=count, offset=pos)
            return arr.tolist(), pos + arr.nbytes
        (v,) = struct.unpack_from(scalar[vt], buf, pos)
        return v, pos + struct.calcsize(scalar[vt])

    meta = {}
    for _ in range(n_kv):
        key, pos = string(pos)
        (vt,) = struct.unpack_from("<I", buf, pos)
        meta[key], pos = value(vt, pos + 4)
    return meta
