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
