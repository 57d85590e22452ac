"""Places for connections that have not logged in yet (issue 9).

Strangers are counted apart from logged-in clients, so that connections
which never log in cannot fill `--max-clients`: at most `total` of them at
once, and at most `per_address` from one source. A connection takes a place
when it is accepted (before its TLS handshake, which is the expensive part
for us) and gives it back at LOGIN_OK or when it closes, whichever is first.

IPv6 sources are counted per /64: one host usually holds a whole /64 and
could otherwise take a new address for every connection.

The last eighth of the total is a reserve that only an address holding no
place may take, one place each: a few addresses that fill the rest (each up
to the per-address limit) still leave a way in for everyone else.
"""

from __future__ import annotations

import ipaddress


def source_key(host: str) -> str:
    """The unit a per-address limit counts: the address, or its /64 for IPv6."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 host a.b.c.d
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Ticket:
    """One admitted connection's place; release() is safe to call more than once."""

    def __init__(self, admission: Admission, key: str) -> None:
        self.admission, self.key = admission, key
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.admission._give_back(self.key)


#: The share of places kept for addresses that hold none (see the module docstring).
RESERVE_DIVISOR = 8


class Admission:
    def __init__(self, total: int, per_address: int) -> None:
        self.total, self.per_address = total, per_address
        self.reserve = total // RESERVE_DIVISOR
        self.count = 0
        self.by_source: dict[str, int] = {}

    def admit(self, host: str) -> Ticket | str:
        """A place for a new connection from `host`, or why there is none (nothing is counted then)."""
        key = source_key(host)
        if self.count >= self.total:
            return f"{self.count} connections are not logged in yet (the maximum)"
        held = self.by_source.get(key, 0)
        if held >= self.per_address:
            return f"{self.per_address} connections from {key} are not logged in yet (the maximum per address)"
        if held and self.count >= self.total - self.reserve:
            return (f"{held} connections from {key} are not logged in yet and the rest are kept for other "
                    "addresses (the maximum per address while the server is crowded)")
        self.count += 1
        self.by_source[key] = self.by_source.get(key, 0) + 1
        return Ticket(self, key)

    def _give_back(self, key: str) -> None:
        self.count -= 1
        left = self.by_source[key] - 1
        if left:
            self.by_source[key] = left
        else:
            del self.by_source[key]  # so the table never keeps addresses that have gone
