"""Property test: whatever a client sends, a logged value stays on one line of
printable text and reads back as what was sent (for ASCII)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from lib.log.events import format_fields

_ESCAPE = re.compile(r'\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt"\\])')


def unquote(value: str) -> str:
    if not value.startswith('"'):
        return value
    simple = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
    return _ESCAPE.sub(lambda m: simple.get(m[1]) or chr(int(m[1][1:], 16)), value[1:-1])


@settings(max_examples=500)
@given(st.text(alphabet=st.characters(max_codepoint=0x7f), max_size=40))
def test_an_ascii_value_is_one_printable_line_that_reads_back(text):
    line = format_fields({"v": text})
    assert line.isprintable() and line.startswith("v=")
    assert unquote(line[2:]) == text
