"""A GGUF file with 80,000 metadata keys loads quickly, and one with a
repeated key among them is refused quickly, naming the key.

The files are written with the gguf package's GGUFWriter (the duplicate one
by hand, since the writer refuses duplicates); every key must be read back
with the value written.  The duplicate-key check was once quadratic
(13 s for 80,000 keys); the bound below is generous for a check that takes
milliseconds, and fails for the quadratic one by a wide margin.
"""
import json
import os
import struct
import sys
import tempfile
import time

import gguf

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from harness import Checker, parse_args  # noqa: E402

N_KEYS = 80000
BOUND_S = 1.0  # whole process, start-up included

args = parse_args()
ck = Checker("gguf many keys")
tmp = tempfile.mkdtemp(prefix="ss-gguf-keys-")


def timed(argv):
    t0 = time.monotonic()
    rc, out, err = ck.run(args.bin, argv)
    return rc, out, err, time.monotonic() - t0


# Keys in an order that is not sorted, so that no input order helps.
keys = [f"test.k{(i * 7919) % N_KEYS:05d}" for i in range(N_KEYS)]

good = os.path.join(tmp, "many.gguf")
w = gguf.GGUFWriter(good, "llama")
for i, k in enumerate(keys):
    w.add_uint32(k, i)
w.write_header_to_file()
w.write_kv_data_to_file()
w.close()

rc, out, err, dt = timed(["info", "--format-only", "--model", good])
ck.check(rc == 0, f"80,000 distinct keys: info failed: {err}")
ck.check(dt < BOUND_S, f"80,000 distinct keys took {dt:.2f} s (bound {BOUND_S} s)")
# Every key read back with the value written (the JSON dump is not timed).
rc, out, err = ck.run(args.bin, ["info", "--json", "--format-only", "--model", good])
if ck.check(rc == 0, f"80,000 distinct keys: info --json failed: {err}"):
    ours = json.loads(out)["metadata"]
    mine = {k: v.get("value") for k, v in ours.items() if k.startswith("test.")}
    ck.check(mine == {k: i for i, k in enumerate(keys)},
             f"keys or values differ from those written: {len(set(mine) ^ set(keys))} keys differ")
print(f"80,000 distinct keys: {dt * 1000:.0f} ms")


def raw_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write_raw(path, key_list):
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, len(key_list)))
        for i, k in enumerate(key_list):
            f.write(raw_str(k) + struct.pack("<II", 4, i))  # type 4: uint32


dup = os.path.join(tmp, "dup.gguf")
dup_keys = keys[:40000] + [keys[12345]] + keys[40000:]
write_raw(dup, dup_keys)
rc, out, err, dt = timed(["info", "--format-only", "--model", dup])
ck.check(rc != 0, "a repeated key among 80,001 was accepted")
ck.check(f"duplicate metadata key '{keys[12345]}'" in err,
         f"the error does not name the repeated key {keys[12345]}: {err.strip()[:300]}")
ck.check(dt < BOUND_S, f"80,001 keys with a repeat took {dt:.2f} s (bound {BOUND_S} s)")
print(f"80,001 keys with one repeat: refused in {dt * 1000:.0f} ms")

ck.finish()
