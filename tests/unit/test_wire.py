"""Wire helpers: bounded line reading and the DATA decoder."""

from __future__ import annotations

import socket

import pytest

from lib.core import wire
from lib.server.linereader import LineReader, LineTooLong


def decode(data: bytes, chunk: int = 3) -> tuple[bytes, wire.DataReceiver]:
    receiver = wire.DataReceiver()
    out = b""
    for i in range(0, len(data), chunk):
        out += receiver.feed(data[i:i + chunk])
    return out, receiver


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 64, 100000])
def test_plain_message(chunk):
    out, receiver = decode(b"Subject: x\r\n\r\nhello\r\n.\r\n", chunk)
    assert out == b"Subject: x\n\nhello\n"
    assert receiver.done and receiver.leftover == b""


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_dot_unstuffing(chunk):
    out, _ = decode(b"..a\r\n...\r\nb.\r\n.\r\n", chunk)
    assert out == b".a\n..\nb.\n"


def test_first_line_is_unstuffed_and_empty_message():
    assert decode(b"..x\r\n.\r\n")[0] == b".x\n"
    out, receiver = decode(b".\r\n")
    assert out == b"" and receiver.done


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n",
                                      b"\r\n.\r"])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_smuggled_end_markers_never_end_data(fake_end, chunk):
    wire_data = b"a" + fake_end + b"MAIL FROM:<x@y>\r\n.\r\n"
    out, receiver = decode(wire_data, chunk)
    assert receiver.done and receiver.leftover == b""
    assert b"MAIL FROM:<x@y>" in out


def test_leftover_is_the_pipelined_input():
    receiver = wire.DataReceiver()
    out = receiver.feed(b"body\r\n.\r\nQUIT\r\n")
    assert out == b"body\n" and receiver.leftover == b"QUIT\r\n"
    receiver.feed(b"more")
    assert receiver.leftover == b"QUIT\r\nmore"


def test_bare_cr_dropped_bare_lf_is_a_line_end():
    assert decode(b"a\rb\nc\r\n.\r\n")[0] == b"ab\nc\n"


def test_octets_count_the_wire():
    _, receiver = decode(b"..a\r\nb\r\n.\r\n")
    assert receiver.octets == len(b"..a\r\nb\r\n")


@pytest.mark.parametrize("chunk", [10, 997, 5000])
def test_line_length_limit(chunk):
    _, ok = decode(b"x" * 998 + b"\r\n.\r\n", chunk)
    assert not ok.overlong
    _, long = decode(b"x" * 999 + b"\r\n.\r\n", chunk)
    assert long.overlong and long.done
    _, huge = decode(b"y" * 100_000 + b"\r\n.\r\n", chunk)
    assert huge.overlong and huge.done


def test_dot_stuffed_998_is_fine():
    _, receiver = decode(b"." + b"x" * 998 + b"\r\n.\r\n", 50)
    assert not receiver.overlong


@pytest.mark.parametrize("chunk", [1, 700, 100_000])
def test_bare_crs_do_not_make_a_line_overlong(chunk):
    # 1,400 octets on the wire, 700 once the bare CRs are dropped: the same
    # answer whether the line arrives whole or is carried across chunks.
    out, receiver = decode(b"a\r" * 700 + b"\r\n.\r\n", chunk)
    assert out == b"a" * 700 + b"\n" and not receiver.overlong
    assert receiver.size == 702


@pytest.mark.parametrize("chunk", [1, 999, 100_000])
def test_overlong_line_is_counted_in_full(chunk):
    _, receiver = decode(b"." + b"z" * 5000 + b"\r\nok\r\n.\r\n", chunk)
    assert receiver.overlong and receiver.done
    assert receiver.size == 5000 + 2 + 4          # the stuffed dot is not content


@pytest.mark.parametrize("chunk", [1, 2000])
def test_a_dot_left_after_dropped_crs_does_not_end_data(chunk):
    out, receiver = decode(b"." + b"\r" * 1500 + b"\r\nnext\r\n.\r\n", chunk)
    assert receiver.done and out == b"\nnext\n"


# ---------------------------------------------------------------- LineReader

@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def test_readline_and_buffer(pair):
    server, client = pair
    reader = LineReader(server)
    client.sendall(b"ONE\r\nTWO\r\nTHR")
    assert reader.readline(512) == b"ONE\r\n"
    assert reader.has_buffered()
    assert reader.readline(512) == b"TWO\r\n"
    client.sendall(b"EE\n")
    assert reader.readline(512) == b"THREE\n"
    assert not reader.has_buffered()
    client.close()
    assert reader.readline(512) == b""


def test_overlong_line_is_discarded_up_to_newline(pair):
    server, client = pair
    reader = LineReader(server, recv_size=64)
    client.sendall(b"x" * 2000 + b"\r\nNEXT\r\n")
    with pytest.raises(LineTooLong):
        reader.readline(512)
    assert reader.readline(512) == b"NEXT\r\n"


def test_line_of_exactly_the_limit(pair):
    server, client = pair
    reader = LineReader(server)
    client.sendall(b"y" * 510 + b"\r\n" + b"z" * 511 + b"\r\n")
    assert len(reader.readline(512)) == 512
    with pytest.raises(LineTooLong):
        reader.readline(512)


def test_chunks_unread_and_discard(pair):
    server, client = pair
    reader = LineReader(server)
    client.sendall(b"DATA\r\nbody")
    assert reader.readline(512) == b"DATA\r\n"
    assert reader.read_chunk() == b"body"
    reader.unread(b"QUIT\r\n")
    assert reader.discard_buffer() == 6 and not reader.has_buffered()


def test_is_number_takes_ascii_digits_only():
    assert wire.is_number("0123")
    for text in ("", "²", "١", "1 ", "-1", "1.0", "x"):
        assert not wire.is_number(text), text
