"""Property tests: the quicker canonicalisation functions and b= pattern
dkimfast puts into dkimpy give the very bytes dkimpy's own give, so a
verdict never changes."""

from __future__ import annotations

import importlib.util
import types

import dkim
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.checks import dkimfast
from lib.checks.dkimfast import speed_up_canonicalization


def as_shipped(path: str) -> types.ModuleType:
    """A fresh copy of one of dkimpy's modules: the ones dkim imported may
    already have the shortcuts in (another test ran a check)."""
    spec = importlib.util.spec_from_file_location(f"as_shipped_{len(path)}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ORIGINAL = as_shipped(dkim.canonicalization.__file__)
QUICK = as_shipped(dkim.canonicalization.__file__)
speed_up_canonicalization(QUICK)
SHIPPED_B_TAG = as_shipped(dkim.__file__).RE_BTAG

text = st.lists(st.sampled_from([b" ", b"  ", b"\t", b"\r", b"\n", b"\r\n", b"a", b"b:",
                                 b"\x0b", b"\xff", b"word "]), max_size=50).map(b"".join)


@settings(max_examples=400)
@given(text)
def test_relaxed_canonicalisation_is_dkimpys(data):
    for name in ("strip_trailing_whitespace", "compress_whitespace", "unfold_header_value"):
        assert getattr(QUICK, name) is not getattr(ORIGINAL, name)     # the shortcut is in
        assert getattr(QUICK, name)(data) == getattr(ORIGINAL, name)(data), name
    assert QUICK.Relaxed.canonicalize_body(data) == ORIGINAL.Relaxed.canonicalize_body(data)
    headers = [[b"Subject", data], [b"X-Other ", data + b"\r\n"]]
    assert QUICK.Relaxed.canonicalize_headers(headers) == \
        ORIGINAL.Relaxed.canonicalize_headers(headers)


base64 = st.sampled_from([b"A", b"z", b"0", b"+", b"/", b"="])
space = st.sampled_from([b" ", b"\t", b"\r\n ", b"\n\t", b"\r", b"\r\n", b"\x0b"])
signature_field = st.lists(st.one_of(base64, space, st.sampled_from(
    [b"b=", b" b =", b";b=", b"; bh=", b"; b\r\n =", b";", b"h=From:To", b"-", b"b"])),
    max_size=60).map(b"".join)


@settings(max_examples=600)
@given(signature_field)
def test_the_b_tag_is_blanked_as_dkimpy_does(value):
    assert dkimfast._B_TAG.pattern != SHIPPED_B_TAG.pattern
    assert dkimfast._B_TAG.sub(b"\\1", value) == SHIPPED_B_TAG.sub(b"\\1", value)
