"""check's warnings: the parts that need no files or users."""

from __future__ import annotations

from lib.cli.preflight import _matches


def test_wildcard_certificates_cover_one_label():
    assert _matches("mail.example.org", "*.example.org")
    assert _matches("mail.example.org", "MAIL.example.org")
    assert not _matches("example.org", "*.example.org")
    assert not _matches("a.mail.example.org", "*.example.org")
    assert not _matches("mail.example.net", "*.example.org")
