#!/usr/bin/env python3
"""Write the stand-in cloud image that manifests/examples/cloud-image.yaml names.

Our machines reach no distribution's image server, so scripts/run-examples.sh
serves this file on 127.0.0.1 in its place. It is an empty qcow2 image (version 2,
64 KiB clusters, no data clusters) of 2 GiB virtual size, the size of Debian 12's
genericcloud image, written byte by byte here rather than by qemu-img so that its
SHA-256 is the same on every machine and every QEMU version: the example's sha256
names it. It boots nothing; replace the example's url and sha256 with the
distribution's to get a real guest.

    scripts/example-image.py OUT
"""

import struct
import sys

CLUSTER = 1 << 16
VIRTUAL = 2 * 1024**3
L2_SPAN = (CLUSTER // 8) * CLUSTER  # bytes one L2 table maps
L1_SIZE = -(-VIRTUAL // L2_SPAN)


def image() -> bytes:
    # cluster 0: header; 1: refcount table; 2: refcount block; 3: L1 table
    header = b"QFI\xfb" + struct.pack(
        ">IQIIQIIQQIIQ",
        2,  # version
        0, 0,  # backing file offset, size
        16,  # cluster bits
        VIRTUAL,
        0,  # no encryption
        L1_SIZE, 3 * CLUSTER,  # L1 entries, offset
        1 * CLUSTER, 1,  # refcount table offset, clusters
        0, 0,  # snapshots
    )
    refcount_table = struct.pack(">Q", 2 * CLUSTER)
    refcount_block = struct.pack(">4H", 1, 1, 1, 1)  # clusters 0-3 in use
    l1_table = bytes(8 * L1_SIZE)  # nothing allocated: reads as zeros
    clusters = [header, refcount_table, refcount_block, l1_table]
    return b"".join(c + bytes(CLUSTER - len(c)) for c in clusters)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1], "wb") as out:
        out.write(image())
