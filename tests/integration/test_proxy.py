"""The benchmarks' store model: the latency proxy's replay mode (`--store replay`)."""
from __future__ import annotations

from fluidcache.testing.proxy import LatencyProxy

from ..helpers import wait_for


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


class _Store:
    """A tiny HTTP store on loopback: GET answers the body held now (after `slow`
    seconds), PUT replaces it; `unframed` answers GETs without a length, closing."""

    def __init__(self) -> None:
        import http.server
        import threading
        store = self
        self.body, self.slow, self.unframed, self.gets = b"old", 0.0, False, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                import time
                body = store.body
                store.gets += 1
                time.sleep(store.slow)             # (the answer of when it was asked)
                if store.unframed:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body)
                    self.close_connection = True
                    return
                enc = "gzip" if self.headers.get("Accept-Encoding") == "gzip" else ""
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + len(enc)))
                self.end_headers()
                self.wfile.write(body + enc.encode())

            def do_PUT(self):
                store.body = self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _ask(port: int, method: str = "GET", body: bytes | None = None, **headers):
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request(method, "/b/k", body=body, headers=headers)
    r = c.getresponse()
    return r.status, r.read(), r.getheader("Content-Length")


def test_replay_keeps_no_answer_asked_before_a_write_and_frames_what_it_sends():
    import threading
    store = _Store()
    try:
        with LatencyProxy(store.endpoint, 0.0, replay=True) as proxy:
            store.slow = 0.5
            got = {}
            t = threading.Thread(target=lambda: got.setdefault("a", _ask(proxy.port)))
            t.start()                                  # a GET at the store...
            wait_for(lambda: store.gets, timeout=10, what="the GET to reach the store")
            assert _ask(proxy.port, "PUT", b"new")[0] == 200   # ...a write meanwhile
            t.join()
            store.slow = 0.0
            assert got["a"][1] == b"old"               # (asked before the write)
            assert _ask(proxy.port)[1] == b"new"       # the in-flight answer not kept
            assert _ask(proxy.port)[1] == b"new"
            # kept by Accept-Encoding too (the fake store echoes it)
            assert _ask(proxy.port, **{"Accept-Encoding": "gzip"})[1] == b"newgzip"
            # a body the store ends by closing: whole, with its length, not kept
            store.unframed = True
            assert _ask(proxy.port, **{"Accept-Encoding": "x"})[1:] == (b"new", "3")
            store.body = b"newer"
            assert _ask(proxy.port, **{"Accept-Encoding": "x"})[1] == b"newer"
    finally:
        store.server.shutdown()
    import pytest
    with pytest.raises(ValueError):
        LatencyProxy("127.0.0.1:1", replay=True, strip=("If-Match",))
