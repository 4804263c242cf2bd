"""Block identity and arithmetic: keys, counts and the blocks a byte range covers.

A file is cut into fixed-size blocks. A file id is a hash of the namespace, the file's
under-store URL and its version (ETag, or size and mtime), so a changed file gets new
keys and never serves old bytes. A block key is a hash of the file id, the block size and
the block index. Clients see file ids (from listings), never under-store URLs; workers
compute the same ids from the URL they resolve.
Never: do I/O.
"""
from __future__ import annotations

from typing import NamedTuple

import xxhash


def file_id(url: str, version: str, scope: str = "") -> str:
    """The identity of one version of one under-store file, within a namespace (`scope`):
    two namespaces never share cached blocks, so a namespace whose credentials cannot
    read an object cannot get its bytes from another namespace's cache either."""
    return xxhash.xxh3_128_hexdigest(f"{scope}\0{url}\0{version}".encode())


def block_key(fid: str, index: int, block_size: int) -> str:
    """A block's key: its file id, block size and index (a block of another size never
    answers for this one, even from a tier kept across a restart with a new size)."""
    return xxhash.xxh3_128_hexdigest(f"{fid}/{block_size}/{index}".encode())


def block_count(size: int, block_size: int) -> int:
    """Blocks of a file; an empty file has none."""
    return -(-size // block_size)


def block_length(size: int, block_size: int, index: int) -> int:
    start = index * block_size
    if index < 0 or start >= size:
        raise ValueError(f"block {index} is outside a file of {size} bytes")
    return min(block_size, size - start)


def reply_length(size: int, block_size: int, index: int, offset: int, length: int) -> int:
    """Bytes a read of [offset, offset + length) of block `index` returns (`length` -1:
    to the block's end); 0 for a read outside the file or the block (it gets an error).
    What a batch's byte budget counts, on the servers and the client alike."""
    try:
        n = block_length(size, block_size, index)
    except ValueError:
        return 0
    if offset < 0 or offset > n:
        return 0
    return n - offset if length < 0 else max(0, min(n, offset + length) - offset)


class Piece(NamedTuple):
    index: int    # block index
    offset: int   # offset inside the block
    length: int   # bytes wanted from the block


def pieces(size: int, block_size: int, start: int, end: int) -> list[Piece]:
    """The pieces of blocks that make up bytes [start, end) of a file of `size` bytes.

    `start`/`end` are clamped to the file as Python slices are (end may exceed size).
    """
    if block_size <= 0:
        raise ValueError(f"block size must be positive, not {block_size}")
    start, end = max(0, min(start, size)), max(0, min(end, size))
    out = []
    pos = start
    while pos < end:
        index, offset = divmod(pos, block_size)
        length = min(block_size - offset, end - pos)
        out.append(Piece(index, offset, length))
        pos += length
    return out
