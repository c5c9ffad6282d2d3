"""Test helpers for DKIM keys, DNS records and the dns-records command.

- `zone_records`: zone-file text, as dns-records and dkim-keygen print it,
  parsed with dnspython's zone reader into {(name, type): [rdata text]}.
- `txt_records`: the TXT texts in such output, by name (strings joined), for
  handing to dkimpy as the DNS it verifies against.
- `dkim_config`: an INI (written to disk) with [dkim], for keygen and signing.
- `cli_in_process`: the command line run in this process, output captured.
- `README_KEY`: the RSA key behind the README's example output (made for the
  README only; it signs nothing anywhere).
"""

from __future__ import annotations

import contextlib
import io
import subprocess
from pathlib import Path

import dns.rdatatype
import dns.zone

from .cli import ROOT
from .ini import config_text


def zone_records(text: str) -> dict[tuple[str, str], list[str]]:
    """Zone-file text parsed by dnspython: {(absolute name, type): [rdata as text]}."""
    zone = dns.zone.from_text(text, origin=".", relativize=False, check_origin=False)
    found: dict[tuple[str, str], list[str]] = {}
    for name, node in zone.nodes.items():
        for rdataset in node.rdatasets:
            key = (name.to_text(), dns.rdatatype.to_text(rdataset.rdtype))
            found[key] = sorted(rdata.to_text() for rdata in rdataset)
    return found


def txt_records(text: str) -> dict[str, str]:
    """{absolute name: TXT text with its strings joined} for every TXT record in `text`."""
    zone = dns.zone.from_text(text, origin=".", relativize=False, check_origin=False)
    found = {}
    for name, node in zone.nodes.items():
        for rdataset in node.rdatasets:
            if rdataset.rdtype == dns.rdatatype.TXT:
                for rdata in rdataset:
                    found[name.to_text()] = b"".join(rdata.strings).decode("ascii")
    return found


def dkim_config(folder: Path, data_dir: Path, *, algorithms: str = "rsa, ed25519",
                selector: str = "mail", name: str = "dkim.ini", **options) -> Path:
    """An INI at folder/name whose data_dir holds the keys; `options` go to config_text."""
    path = folder / name
    extra = options.pop("extra", "")
    path.write_text(config_text(data_dir=data_dir, extra=f"[dkim]\nselector = {selector}\n"
                                f"algorithms = {algorithms}\n" + extra, **options))
    return path


def cli_in_process(*argv: str) -> subprocess.CompletedProcess[str]:
    """lib.cli.main.main(argv), its exit code, stdout and stderr."""
    from lib.cli.main import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv), ROOT)
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


README_KEY = b"""\
-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAuzedCeWVNbv3iQEIfhc8S5WnJS3AcuiymE9TWFFJQrMi2F/M
4n/RL4eSmKgKsdMUfgw4G0icGy4JuX8elvsrssWowUvJ9iXPxA3/U+lrtdcNRkwf
n4tg927CFbL8ck7Cm02J6EHKA5M/EdvrssskP/HBg4DLsWyZH5eg9XCvk7RG99Pi
P7t3iGgh+qXbTVTds6kzrDKbgk0Io+u03/J3bWTQyVtVKE66zoKTga4zW9u6e3zQ
B1GrdcHwHBMX7GyRTc4FydckabpIXs0sLe/F2Jswv4ZbG2eDFDWwt1XD0KvJgZWf
c8o49sZfk5oT90ouJcFD7bHfnVns4+m3PiAyxQIDAQABAoIBAAJlJseJiK0uaQBm
Vnvo4TCP04mhIKWZ1Awo/LVHT1ggvUyu4zVvzlB4laWjMHRez4LN+ns+m/7KwWv1
3s5IJM01ESb+lYYqiqvzqo7dkGJvQ+vpJRIGfeRAv8tezndBX4+nzzGfHINYEBLd
lW/K5uwv+FyDKWkGteFSbAxwVVJv+SH0og9utpGO3nPCcdg7qIWvWWvxs9mI1Ii2
jNisX3PUc0YN3NaNtXB4XuB7TQlaEzQFuyTmXNc8F7aqbt6acn837behOqtswuOQ
mZLrkecKG6OO1P1sAI4ONXcu8zKimGFiCEHr1C8IfVhKukcw1m8cMQdKrFkDx5vu
D9M5JosCgYEA8Tzl1IAqU74vVP6c7OExHqTI44KiOSJh4L2Zm9+aav3d6YotGEJL
lPV1L/aDcDoTn1nu7TUAwf3pj7NvrPIX0AjnlcstFfF8x+PU2CXLx+CuiQXBi+SX
Dl54ooC1fd7QjNWJsHMGaAo3tb/XlxPIglynzlS7eZxhL4795e2YCBcCgYEAxqx1
HgXXjIRmx843PRe+waFKk5yv2G9dQfObgGO5MngLfL7wxux1+ZdnLCP7Y72RgY9z
8W1kTF2jOVll9D5k/QM5ys2ITrHl0RHWceroMOpLFJYyRsaOeH+vgKdpJXOs3NM0
4vTkRXXVDIlJoGIH8r16mAYOjvkGTzIcsc8WyYMCgYBCdZt/spt2nLOff9GttNB6
d71caFXW1bEPYEycU7rP9QaY21dXEpSOAh15zDkjxuw2/2jCctK1nwUkcLO4eq2y
w3FBpErUe8X7r7monqkIdM7AsxRCPQSckcw8QKc/eQ4NbprTQK0oJoB4ktSLK4kW
2P3l6xQHCd0AZC1wlcdHmwKBgF3n7B+5wS2A85fjqAZvb9HULAzjldZmpRzkSY8B
E+uABGX9Vo+f+w9zeefKRivZ0an8pV/rReo2pE0aLW+qAk/5M1rhlVklCyysEsGb
uA5O4Bgl+jOr7HGWYN0dxDxYlc924VuZR0BxtrcLOUreq0UYPJcY3c7EdDAAzsFY
0juDAoGBANyjeS+UvyUJ94snPS44sX1veLoIwb90CLG1My+ublH0Fv6kQUThP4qr
xruhbPYM6iJ/IGVkUE9WDrFGbGwuUvRs9y/+sOYjazF6IN18YWpKT8vMSM2CrYPP
bCB1IO2S+C2UYhoHAUBuUR+3ZnlYXlpfXRl+szeuFvC0knJqSbJu
-----END RSA PRIVATE KEY-----
"""
