"""Keep http(s) media URLs from reaching the cluster's own network (SSRF defence).

Manifest URLs are untrusted input: `http://169.254.169.254/latest/meta-data/...` would copy
the node's cloud credentials into an output row, `http://10.0.0.5:8265/` would poke the Ray
dashboard. So every address an http(s) fetch connects to is checked, at connection time,
inside aiohttp's connector (fsspec's HTTP filesystem uses aiohttp):

  * host names go through a resolver that removes refused addresses from the DNS answer;
    the connector connects only to what the resolver returns, so the address checked is
    the address connected to (no DNS-rebinding window between check and use);
  * IP literals never reach a resolver in aiohttp, so the connector checks them itself, on
    every request, each redirect hop included.

This module is the policy (which addresses, why); `guarded_http` puts it into aiohttp.

Object-store endpoints the operator configures (s3/gs `endpoint_url`) do not go through
here: only URLs fetched over http(s).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Checked in order, so a narrower block gives the more useful reason.
_V4_REFUSED = [
    ("0.0.0.0/8", "an unspecified ('this host') address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address (cloud metadata services live at 169.254.169.254)"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
    ("192.0.0.0/24", "an IETF protocol address (some metadata services live here)"),
    ("192.0.2.0/24", "a documentation address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("192.88.99.0/24", "a 6to4 relay address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
]
_V6_REFUSED = [
    ("::/128", "the unspecified address"),
    ("::1/128", "the loopback address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("fc00::/7", "a unique local (private) address (AWS metadata lives at fd00:ec2::254)"),
    ("ff00::/8", "a multicast address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001:db8::/32", "a documentation address"),
    ("2001:2::/48", "a benchmarking address"),
    ("2001:10::/28", "an ORCHID address"),
    ("::/8", "a reserved address"),
]
_REFUSED = [(ipaddress.ip_network(net), reason) for net, reason in _V4_REFUSED + _V6_REFUSED]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Characters of the numeric IPv4 spellings inet_aton accepts (2130706433, 0x7f.1, 0177.0.0.1).
_LEGACY_V4 = re.compile(r"^[0-9a-fA-FxX.]+$")
_HOST_NAME = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


REFUSED_HINT = "refused (fetch.allowed_private_hosts lists the hosts and networks that may be reached)"


class AddressNotAllowed(Exception):
    """Raised inside aiohttp when a connection would reach a refused address.

    Not an OSError on purpose: aiohttp wraps OSErrors from resolvers into retriable
    connection errors, while this must reach the Fetcher as what it is."""


def literal_address(host: str | None) -> IPAddress | None:
    """The address `host` spells, in any form a resolver would accept, or None for a name.

    Besides canonical IPv4/IPv6 (bracketed or not, with a zone id), the legacy IPv4
    spellings (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`) that getaddrinfo maps onto an
    address are recognised, so they cannot pass for host names.
    """
    if not host:
        return None
    host = host.strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_V4.match(host) and any(c.isdigit() for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def refused_reason(address: IPAddress) -> str | None:
    """Why `address` may not be fetched from by default, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_v4(address)
        if embedded is not None:
            reason = refused_reason(embedded)
            return None if reason is None else f"an IPv6 address that carries {embedded}, {reason}"
    for network, reason in _REFUSED:
        if address in network:
            return reason
    if not address.is_global:
        return "not a globally routable address"
    return None


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries and gets routed to (mapped, NAT64, 6to4, Teredo)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


class AddressPolicy:
    """Which addresses http(s) fetches may reach: public ones, plus an explicit allow-list.

    `allowed` entries are IP networks (CIDR, or a single address) whose addresses are
    accepted although private/loopback/link-local, and host names (exact, or `*.suffix`
    for any name under suffix) whose every address is accepted: for in-cluster stores.
    """

    def __init__(self, allowed: Iterable[str] = ()):
        self.entries = tuple(sorted({e.strip().lower() for e in allowed}))
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._names: set[str] = set()
        self._suffixes: list[str] = []
        for entry in self.entries:
            kind, value = parse_allowed_entry(entry)
            if kind == "network":
                self._networks.append(value)
            elif kind == "suffix":
                self._suffixes.append(value)
            else:
                self._names.add(value)

    def __repr__(self) -> str:
        # Deterministic: fsspec keys its filesystem instance cache on the options' text.
        return f"AddressPolicy({list(self.entries)})"

    def allows_name(self, host: str) -> bool:
        name = host.lower().rstrip(".")
        return name in self._names or any(name.endswith(suffix) for suffix in self._suffixes)

    def refusal(self, address: IPAddress) -> str | None:
        """Why a connection to `address` is refused, or None if it may be made."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # one address, two spellings: one answer
        if address.version == 6 and address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%")[0])
        if any(address in network for network in self._networks):
            return None
        reason = refused_reason(address)
        return None if reason is None else f"{address} is {reason}"

    def host_refusal(self, host: str | None) -> str | None:
        """Why a URL host is refused before any lookup: only IP literals can be judged here."""
        if host is None or self.allows_name(host):
            return None
        address = literal_address(host)
        refusal = None if address is None else self.refusal(address)
        return None if refusal is None else f"{refusal}; {REFUSED_HINT}"


def parse_allowed_entry(entry: str) -> tuple[str, Any]:
    """('network', IPv4Network|IPv6Network), ('suffix', '.domain') or ('name', 'host'); ValueError otherwise."""
    entry = entry.strip().lower()
    try:
        return "network", ipaddress.ip_network(entry, strict=False)
    except ValueError:
        pass
    name = entry.rstrip(".")
    if not _HOST_NAME.match(name):
        raise ValueError(f"{entry!r} is neither an IP network (CIDR) nor a host name ('name' or '*.suffix')")
    if name.startswith("*."):
        return "suffix", name[1:]
    return "name", name
