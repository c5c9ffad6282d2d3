"""Property tests: chunked line-ending converters give the same answer however
the input is split."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from lib.core import wire

message = st.lists(st.sampled_from([b"a", b"b", b".", b"\r", b"\n", b"\r\n", b"x" * 7]),
                   max_size=60).map(b"".join)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


def reference_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"")


def reference_pop3_size(data: bytes) -> int:
    if not data:
        return 0
    # every LF not preceded by CR gains a CR; a missing final LF adds CRLF
    count = len(data)
    for i, byte in enumerate(data):
        if byte == 0x0A and (i == 0 or data[i - 1] != 0x0D):
            count += 1
    return count + (0 if data.endswith(b"\n") else 2)


@given(message, st.lists(st.integers(min_value=0, max_value=500), max_size=6))
def test_lf_converter_is_split_invariant(data, cuts):
    converter = wire.LfConverter()
    out = b"".join(converter.feed(piece) for piece in split(data, cuts)) + converter.flush()
    assert out == reference_lf(data)
    assert b"\r" not in out


@given(message, st.lists(st.integers(min_value=0, max_value=500), max_size=6))
def test_crlf_counter_is_split_invariant(data, cuts):
    counter = wire.CrlfCounter()
    for piece in split(data, cuts):
        counter.feed(piece)
    assert counter.total() == reference_pop3_size(data)


def reference_pop3(data: bytes, foreign: bool) -> bytes:
    """What RETR must send, built line by line the slow, obvious way."""
    if foreign:
        text = data.replace(b"\r\n", b"\n")
    else:
        text = data
    if text and not text.endswith(b"\n"):
        text += b"\n"
    lines = text.split(b"\n")[:-1] if text else []
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n"
                    for line in lines) + b".\r\n"


lf_message = st.lists(st.sampled_from([b"a", b".", b"\n", b"..", b"x" * 5]), max_size=50) \
    .map(b"".join)


@given(lf_message, st.lists(st.integers(min_value=0, max_value=300), max_size=6))
def test_pop3_encoder_matches_reference_for_our_files(data, cuts):
    encoder = wire.MessageEncoder(foreign=False)
    out = b"".join(encoder.feed(piece) for piece in split(data, cuts)) + encoder.finish()
    assert out == reference_pop3(data, foreign=False)


@given(message, st.lists(st.integers(min_value=0, max_value=500), max_size=6))
def test_pop3_encoder_size_equals_counter_for_any_file(data, cuts):
    encoder = wire.MessageEncoder(foreign=True)
    out = b"".join(encoder.feed(piece) for piece in split(data, cuts)) + encoder.finish()
    unstuffed = out[:-3].replace(b"\r\n..", b"\r\n.")
    if unstuffed.startswith(b".."):
        unstuffed = unstuffed[1:]
    counter = wire.CrlfCounter()
    counter.feed(data)
    assert len(unstuffed) == counter.total()
    assert out.endswith(b".\r\n")


# ---------------------------------------------------------------- SMTP DATA decoder

# Pieces that make the hard cases likely: end markers, fake ones (bare CR/LF
# around a dot), dot lines, long runs that cross the 998-octet line limit
# with or without CRs in them.
data_piece = st.sampled_from([
    b"a", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.\r\n", b".\r\n", b"\n.\n", b"\r.\r",
    b"\n.\r\n", b"\r\n.\n", b"x" * 7, b"y" * 333, b"\r" * 300, b"a\r" * 200])
data_stream = st.lists(data_piece, max_size=40).map(b"".join)
chunk_cuts = st.lists(st.integers(min_value=0, max_value=20_000), max_size=12)


def receive(chunks: list[bytes]) -> tuple[bytes, wire.DataReceiver]:
    receiver = wire.DataReceiver()
    return b"".join(receiver.feed(chunk) for chunk in chunks), receiver


def reference_data(data: bytes) -> dict:
    """What DATA must decode to, the slow, obvious way: find the first CRLF.CRLF
    (counting the DATA command's own CRLF), then take the content line by line."""
    stream = b"\r\n" + data
    end = stream.find(b"\r\n.\r\n")
    content = stream[2:end + 2] if end >= 0 else data[:data.rfind(b"\n") + 1]
    lines = content.replace(b"\r\n", b"\n").replace(b"\r", b"").split(b"\n")[:-1]
    lines = [line[1:] if line.startswith(b".") else line for line in lines]
    decoded = b"".join(line + b"\n" for line in lines)
    return {"done": end >= 0, "leftover": stream[end + 5:] if end >= 0 else b"",
            "decoded": decoded, "size": len(decoded) + len(lines),
            "overlong": any(len(line) > 998 for line in lines)}


def outcome(decoded: bytes, receiver: wire.DataReceiver) -> dict:
    """What the SMTP session decides on. The content of a message with an
    overlong line is not kept (the message is refused), so it is left out."""
    result = {"done": receiver.done, "leftover": receiver.leftover, "size": receiver.size,
              "overlong": receiver.overlong}
    if not receiver.overlong:
        result["decoded"] = decoded
    return result


@settings(max_examples=300, deadline=None)
@given(data_stream, st.binary(max_size=20), chunk_cuts)
def test_data_receiver_is_split_invariant(data, after, cuts):
    stream = data + b"\r\n.\r\n" + after      # ends somewhere: maybe inside `data`
    whole = outcome(*receive([stream]))
    split_up = outcome(*receive(split(stream, cuts)))
    expected = reference_data(stream)
    if expected["overlong"]:
        del expected["decoded"]
    assert whole == expected
    assert split_up == expected


@settings(max_examples=200, deadline=None)
@given(data_stream, chunk_cuts)
def test_unfinished_data_decodes_the_same_however_split(data, cuts):
    decoded, receiver = receive(split(data, cuts))
    expected = reference_data(data)
    assert receiver.done == expected["done"]
    assert receiver.leftover == expected["leftover"]
    if not receiver.overlong and not expected["overlong"]:
        assert decoded == expected["decoded"]


@settings(max_examples=100, deadline=None)
@given(st.lists(data_piece, max_size=12).map(b"".join), st.binary(max_size=30))
def test_data_receiver_byte_by_byte(data, after):
    stream = data + b"\r\n.\r\n" + after
    whole = outcome(*receive([stream]))
    bytewise = outcome(*receive([stream[i:i + 1] for i in range(len(stream))]))
    assert whole["done"] and bytewise == whole


@settings(max_examples=200, deadline=None)
@given(data_stream, chunk_cuts)
def test_data_receiver_counts_wire_octets(data, cuts):
    stream = data + b"\r\n.\r\n"
    _, receiver = receive(split(stream, cuts))
    end = (b"\r\n" + stream).find(b"\r\n.\r\n")
    assert receiver.octets == end       # the content with its CRLFs, stuffed; no end marker
