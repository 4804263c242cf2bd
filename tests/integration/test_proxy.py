"""The benchmarks' store model: the latency proxy's replay mode (`--store replay`)."""
from __future__ import annotations

from fluidcache.testing.proxy import LatencyProxy


def test_replay_answers_a_request_again_from_memory_and_forgets_on_a_write(moto):
    s3 = moto.filesystem()
    s3.mkdir("fc-replay")
    one = b"one" * 40_000
    s3.pipe_file("fc-replay/a", one)
    with LatencyProxy(moto.endpoint, 0.0, replay=True) as proxy:
        fs = proxy.filesystem()
        assert fs.cat_file("fc-replay/a") == one
        # changed behind the proxy's back: the same request is answered from memory
        s3.pipe_file("fc-replay/a", b"two" * 40_000)
        assert proxy.filesystem().cat_file("fc-replay/a") == one
        # a range not asked before is the store's answer (kept by range)
        assert fs.cat_file("fc-replay/a", start=3, end=9) == b"twotwo"
        assert fs.cat_file("fc-replay/a", start=3, end=9) == b"twotwo"
        # a write through the proxy forgets every kept answer
        fs.pipe_file("fc-replay/a", b"three")
        assert proxy.filesystem().cat_file("fc-replay/a") == b"three"
        assert proxy.filesystem().info("fc-replay/a")["size"] == 5
        # a missing object's answer (404) is never kept
        assert not fs.exists("fc-replay/b")
        s3.pipe_file("fc-replay/b", b"now")
        assert proxy.filesystem().cat_file("fc-replay/b") == b"now"
