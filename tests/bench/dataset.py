#!/usr/bin/env python3
"""Deterministic benchmark dataset for Tandem, and a deterministic ~1% mutation.

  dataset.py generate DIR   small files (1-64 KiB) in nested folders, medium files
                            (1-4 MiB), large files, some duplicates; half of the files
                            compressible text, half random bytes
  dataset.py generate-smalltree DIR
                            a source checkout or home directory: TREE_FILES (default
                            80000) files in a deep tree, sizes from 200 B to 100 KiB
                            (median ~3 KiB), mostly text that compresses 4-5x, and one
                            file in 500 larger (128 KiB-2 MiB, half of them random)
  dataset.py mutate DIR     change ~0.5% of files, delete ~0.25%, add ~0.25%

Sizes come from the environment: SMALL (default 20000), MEDIUM (200), LARGE (4),
LARGE_MIB (128), about 1.7 GB in all. The same values always give the same bytes;
SEED (for `generate`) gives another set of bytes of the same shape, so several
nodes can each have their own data.
"""
import os
import random
import sys

WORDS = (b"backup restore node replica server client filespace version policy chunk "
         b"catalog failover primary secondary tandem data storage archive retention").split()


_POOL = None


def text_pool(rng):
    """4 MiB of word soup, built once; text content is spliced from it."""
    global _POOL
    if _POOL is None:
        words = []
        for _ in range(600_000):
            words.append(rng.choice(WORDS) + (b"\n" if rng.random() < 0.08 else b" "))
        _POOL = b"".join(words)[: 4 << 20]
    return _POOL


def slices(rng, pool, size, shortest, longest):
    """`size` bytes of random slices of `pool`, each shortest-longest bytes."""
    parts, have = [], 0
    while have < size:
        n = rng.randint(shortest, longest)
        start = rng.randrange(len(pool) - n)
        parts.append(pool[start:start + n])
        have += n
    return b"".join(parts)[:size]


def text_block(rng, size):
    """Compressible text: slices of 512 B-8 KiB from the pool, end to end."""
    return slices(rng, text_pool(rng), size, 512, 8192)


def content(rng, size):
    if rng.random() < 0.5:
        return text_block(rng, size)
    return rng.randbytes(size)


def generate(root):
    small = int(os.environ.get("SMALL", 20000))
    medium = int(os.environ.get("MEDIUM", 200))
    large = int(os.environ.get("LARGE", 4))
    large_mib = int(os.environ.get("LARGE_MIB", 128))
    rng = random.Random(int(os.environ.get("SEED", 20261123)))
    total = 0
    for i in range(small):
        d = os.path.join(root, "small", f"d{i % 64:02}", f"e{i % 9}", f"g{i % 5}")
        os.makedirs(d, exist_ok=True)
        data = content(rng, rng.randint(1024, 64 * 1024))
        with open(os.path.join(d, f"f{i:06}.dat"), "wb") as f:
            f.write(data)
        total += len(data)
        if i % 50 == 0:  # duplicates
            with open(os.path.join(d, f"f{i:06}.copy"), "wb") as f:
                f.write(data)
            total += len(data)
    os.makedirs(os.path.join(root, "medium"), exist_ok=True)
    for i in range(medium):
        data = content(rng, rng.randint(1 << 20, 4 << 20))
        with open(os.path.join(root, "medium", f"m{i:04}.bin"), "wb") as f:
            f.write(data)
        total += len(data)
    os.makedirs(os.path.join(root, "large"), exist_ok=True)
    for i in range(large):
        with open(os.path.join(root, "large", f"l{i}.img"), "wb") as f:
            for _ in range(large_mib):
                block = content(rng, 1 << 20)
                f.write(block)
                total += len(block)
    print(f"generated {total / 1e6:.1f} MB in {root}")


_SOURCE = None


def source_pool(rng):
    """8 MiB of source-like text: indented lines of words, numbers and
    generated identifiers, which compress about as well as real code."""
    global _SOURCE
    if _SOURCE is None:
        lines, have = [], 0
        while have < 8 << 20:
            depth = rng.randint(0, 4)
            tokens = []
            for _ in range(rng.randint(2, 10)):
                r = rng.random()
                if r < 0.7:
                    tokens.append(rng.choice(WORDS))
                elif r < 0.88:
                    tokens.append(b"%s_%x" % (rng.choice(WORDS), rng.getrandbits(rng.choice((4, 8, 12)))))
                else:
                    tokens.append(b"%d" % rng.randint(0, 1 << rng.choice((4, 8, 16))))
            line = b"    " * depth + b" ".join(tokens) + rng.choice((b";", b",", b" {", b"", b")")) + b"\n"
            lines.append(line)
            have += len(line)
        _SOURCE = b"".join(lines)
    return _SOURCE


def source_text(rng, size):
    """Source-like text: slices of 256 B-4 KiB from its pool, end to end."""
    return slices(rng, source_pool(rng), size, 256, 4096)


def generate_smalltree(root):
    files = int(os.environ.get("TREE_FILES", 80000))
    rng = random.Random(20261204)
    names = [w.decode() for w in WORDS] + ["src", "lib", "test", "docs", "util", "core", "net", "io"]
    exts = [".c", ".h", ".rs", ".py", ".md", ".txt", ".json", ".go", ".js", ".html"]
    # Directories: a tree grown at random, 2-8 levels deep, ~12 files each.
    dirs = [root]
    while len(dirs) < max(1, files // 12):
        parent = rng.choice(dirs)
        if parent.count(os.sep) - root.count(os.sep) >= 8:
            continue
        dirs.append(os.path.join(parent, f"{rng.choice(names)}{len(dirs)}"))
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    total = 0
    for i in range(files):
        d = rng.choice(dirs)
        if rng.random() < 0.002:
            size = rng.randint(128 << 10, 2 << 20)
            data = source_text(rng, size) if rng.random() < 0.5 else rng.randbytes(size)
            name = f"blob{i}.bin"
        else:
            size = int(min(100 << 10, max(200, rng.lognormvariate(8.0, 1.1))))
            data = source_text(rng, size)
            name = f"{rng.choice(names)}{i}{rng.choice(exts)}"
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
        total += len(data)
    print(f"generated {total / 1e6:.1f} MB in {files} files, {len(dirs)} directories, in {root}")


def mutate(root):
    rng = random.Random(99)
    files = sorted(os.path.join(dp, n) for dp, _, names in os.walk(root) for n in names)
    changed = deleted = added = 0
    for path in files:
        r = rng.random()
        if r < 0.005:
            size = os.path.getsize(path)
            with open(path, "r+b") as f:  # rewrite a slice in the middle
                f.seek(size // 2)
                f.write(rng.randbytes(min(4096, max(1, size // 4))))
            changed += 1
        elif r < 0.0075:
            os.remove(path)
            deleted += 1
        elif r < 0.01:
            with open(path + ".new", "wb") as f:
                f.write(content(rng, rng.randint(1024, 64 * 1024)))
            added += 1
    print(f"mutated: {changed} changed, {deleted} deleted, {added} added")


if __name__ == "__main__":
    commands = {"generate": generate, "generate-smalltree": generate_smalltree, "mutate": mutate}
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](sys.argv[2])
