"""An HTTP under store (fsspec's http filesystem) against a loopback server that answers
Range requests, sends an ETag, and ignores If-Match: a fill of a file rewritten since it
was listed is caught from the answer's ETag, never taken for the listed version."""
from __future__ import annotations

import asyncio
import hashlib
import threading

import pytest

from fluidcache.errors import StaleVersion
from fluidcache.testing.s3 import free_port
from fluidcache.understore import Mount

pytestmark = pytest.mark.integration


@pytest.fixture()
def server():
    from aiohttp import web

    files: dict[str, bytes] = {}

    async def get(request):
        body = files.get(request.match_info["name"])
        if body is None:
            raise web.HTTPNotFound()
        headers = {"ETag": '"%s"' % hashlib.md5(body).hexdigest(), "Accept-Ranges": "bytes"}
        rng = request.headers.get("Range")       # If-Match is ignored, on purpose
        if rng and request.method == "GET":
            start, end = (int(x) for x in rng[len("bytes="):].split("-"))
            part = body[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(body)}"
            return web.Response(status=206, body=part, headers=headers)
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return web.Response(status=200, headers=headers)
        return web.Response(body=body, headers=headers)

    async def index(request):                  # a directory page: links, no sizes
        links = "".join(f'<a href="{n}">{n}</a>' for n in sorted(files))
        return web.Response(text=f"<html><body>{links}</body></html>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_route("GET", "/", index)
    app.router.add_route("*", "/{name}", get)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    port = free_port()

    async def up():
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    loop.run_until_complete(up())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", files
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_a_rewritten_http_file_is_stale_not_mixed(server):
    base, files = server
    files["f.bin"] = b"a" * 1000
    m = Mount(base)
    info = m.info("f.bin")
    version = m.version_of(info, "scope")
    assert version.startswith("e:") and info["size"] == 1000
    assert m.read_range("f.bin", version, 100, 200, 1000) == (b"a" * 100, True)
    files["f.bin"] = b"b" * 1000                        # same size, other bytes
    with pytest.raises(StaleVersion):
        m.read_range("f.bin", version, 100, 200, 1000)
    fresh = m.version_of(m.info("f.bin"), "scope")
    assert fresh != version and m.read_range("f.bin", fresh, 0, 10, 1000).data == b"b" * 10


def test_files_listed_from_a_directory_page_get_their_sizes_and_versions(server):
    """fsspec's HTTP listing gives links without sizes: each is asked for its own (seen:
    every such file read as empty)."""
    base, files = server
    files["a.bin"], files["b.bin"] = b"x" * 24, b"y" * 7
    m = Mount(base)
    got = {e["name"].rsplit("/", 1)[-1]: e for e in m.ls("")}
    assert {k: v["size"] for k, v in got.items()} == {"a.bin": 24, "b.bin": 7}
    assert all(m.version_of(e, "s").startswith("e:") for e in got.values())
    one = m.ls("a.bin")                          # a file lists as itself
    assert len(one) == 1 and one[0]["size"] == 24
