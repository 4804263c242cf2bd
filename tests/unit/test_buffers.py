"""Result buffers filled in place (client/buffers.py): the bytes returned are the bytes
written, of the length read, and each buffer is its own object."""
from fluidcache.client.buffers import Buffer


def test_a_buffer_is_filled_in_place_and_finished_once():
    outs = []
    for n in (0, 1, 2, 4096, 3 * 2**20 + 7):
        b = Buffer(n)
        data = bytes((i * 7) % 251 for i in range(min(n, 5000))) * (n // 5000 + 1)
        b.view[:] = data[:n]
        out = b.finish()
        assert type(out) is bytes and out == data[:n] and b.view is None
        assert hash(out) == hash(bytes(data[:n]))
        outs.append(out)
    b = Buffer(10)
    b.view[:4] = b"abcd"
    assert b.finish(4) == b"abcd"                   # fewer read than asked (end of file)
    one, two = Buffer(16), Buffer(16)              # never shared
    one.view[:] = b"a" * 16
    two.view[:] = b"b" * 16
    assert one.finish() == b"a" * 16 and two.finish() == b"b" * 16
    assert outs[3] == bytes((i * 7) % 251 for i in range(4096))   # unchanged since


def test_a_failed_block_raises_only_once_no_fetch_still_writes():
    """One block of a large read fails at once while others are still arriving: the
    error is raised only after every begun fetch has finished writing into the caller's
    buffer (it may be freed or reused at once), and those not begun are cancelled."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import pytest

    from fluidcache.client.jobs import settle
    from fluidcache.errors import StaleVersion
    buf = Buffer(4 * 1024)
    started, release = threading.Event(), threading.Event()

    def fetch(i):
        if i == 0:
            started.wait(10)          # the others are under way
            raise StaleVersion("block 0 changed")
        started.set()
        release.wait(0.2)             # still receiving when block 0 fails
        buf.view[i * 1024:(i + 1) * 1024] = bytes([i]) * 1024

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(fetch, i) for i in range(4)]
        with pytest.raises(StaleVersion):
            settle(futures)
        assert all(f.done() for f in futures)            # nothing runs on after the raise
        assert any(f.cancelled() for f in futures[2:])   # not begun: cancelled
    release.set()
