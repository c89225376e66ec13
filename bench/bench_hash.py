"""Cost of verifying a factor-set-sized file by content: XXH3-128 (what gdig uses) against SHA-256.

Writes a file of ``--gib`` GiB of random bytes, then times ``gdig_core.integrity.file_digest`` on
it cold (the file's pages dropped from the page cache with posix_fadvise, so the disk is read) and
warm (from the page cache), and hashlib's SHA-256 warm, for comparison. Also times the digests in
memory on a 256 MiB buffer (pure hashing speed, plus BLAKE2b and BLAKE3 when installed).

    python bench/bench_hash.py --gib 10 --path /tmp/gdig-hash-bench.bin
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

from gdig_core.integrity import file_digest

_CHUNK = 64 << 20


def write_file(path: Path, gib: float) -> int:
    block = os.urandom(_CHUNK)
    total = int(gib * (1 << 30))
    with open(path, "wb") as fh:
        written = 0
        while written < total:
            n = min(_CHUNK, total - written)
            fh.write(block[:n] if written % (3 * _CHUNK) else os.urandom(n))
            written += n
        fh.flush()
        os.fsync(fh.fileno())
    return total


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def in_memory() -> dict[str, float]:
    import xxhash

    buf = os.urandom(256 << 20)
    speeds = {
        "xxh3_128": len(buf) / timed(lambda: xxhash.xxh3_128(buf).hexdigest()),
        "sha256": len(buf) / timed(lambda: hashlib.sha256(buf).hexdigest()),
        "blake2b": len(buf) / timed(lambda: hashlib.blake2b(buf).hexdigest()),
    }
    try:
        import blake3

        speeds["blake3"] = len(buf) / timed(lambda: blake3.blake3(buf).hexdigest())
    except ImportError:
        pass
    return {k: round(v / 1e9, 2) for k, v in speeds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=10.0)
    ap.add_argument("--path", type=Path, default=Path("/tmp/gdig-hash-bench.bin"))
    ap.add_argument("--keep", action="store_true", help="keep the file afterwards")
    args = ap.parse_args()
    result: dict[str, object] = {"in_memory_GB_per_s": in_memory()}
    size = write_file(args.path, args.gib)
    try:
        drop_cache(args.path)
        cold = timed(lambda: file_digest(args.path))
        warm = timed(lambda: file_digest(args.path))
        sha_warm = timed(lambda: sha256_file(args.path))
        result.update({
            "file_bytes": size,
            "xxh3_cold_s": round(cold, 2), "xxh3_cold_GB_per_s": round(size / cold / 1e9, 2),
            "xxh3_warm_s": round(warm, 2), "xxh3_warm_GB_per_s": round(size / warm / 1e9, 2),
            "sha256_warm_s": round(sha_warm, 2), "sha256_warm_GB_per_s": round(size / sha_warm / 1e9, 2),
        })
    finally:
        if not args.keep:
            args.path.unlink(missing_ok=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
