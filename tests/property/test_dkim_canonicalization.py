"""Property test: the quicker canonicalisation functions dkimfast puts into
dkimpy give the very bytes dkimpy's own give, so a verdict never changes."""

from __future__ import annotations

import importlib.util
import types

import dkim
from hypothesis import given, settings
from hypothesis import strategies as st

from lib.checks.dkimfast import speed_up_canonicalization


def dkimpys_own() -> types.ModuleType:
    """A fresh copy of dkimpy's canonicalization module: the one dkim imported
    may already have the shortcuts in (another test ran a check)."""
    spec = importlib.util.spec_from_file_location("dkim_canonicalization_as_shipped",
                                                  dkim.canonicalization.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ORIGINAL = dkimpys_own()
QUICK = dkimpys_own()
speed_up_canonicalization(QUICK)

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
