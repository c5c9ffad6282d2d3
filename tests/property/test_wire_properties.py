"""Property tests: chunked line-ending converters give the same answer however
the input is split."""

from __future__ import annotations

from hypothesis import given
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
