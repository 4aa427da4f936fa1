"""An independent implementation of the A/B/n assignment (crates/abn/src/assign.rs), for SDKs
and to cross-check the Rust code: the unit test `the_answer_depends_only_on_its_inputs` pins
the answers this script prints. Needs the `xxhash` package (pip install xxhash).

    python3 assign_reference.py
"""
import math
import struct

import xxhash


def version_hash(user, signature, index, seed=0):
    u, s = user.encode(), signature.encode()
    data = struct.pack("<Q", len(u)) + u + struct.pack("<Q", len(s)) + s + struct.pack("<I", index)
    return xxhash.xxh3_64_intdigest(data, seed=seed)


def choose(user, weights, signatures, seed=0):
    """Index of the version `user` gets, or None when every weight is 0."""
    best = None
    for i, (w, sig) in enumerate(zip(weights, signatures)):
        if w == 0:
            continue
        u = ((version_hash(user, sig, i, seed) >> 11) + 0.5) / 2**53
        score = -w / math.log(u)
        if best is None or score > best[1]:  # a tie keeps the lower index
            best = (i, score)
    return None if best is None else best[0]


if __name__ == "__main__":
    sigs = ["a1b2", "c3d4"]
    print(version_hash("", "", 0))
    print([choose(f"u{u}", [1, 1], sigs) for u in range(16)])
    print([choose(f"u{u}", [3, 1], sigs) for u in range(16)])
