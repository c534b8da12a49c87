"""Where a service's own storage providers may make the manager connect.

A ``minio.<id>`` or ``s3.<id>`` provider in a service's ``storage_providers`` names an endpoint, and the
manager connects to it to stage a job's files in and out, for a script that itself has no network. So by
default those connections may not reach what only the manager can reach: loopback, link-local (the cloud
metadata address among them), unspecified addresses, IPv4-mapped and -compatible IPv6 forms of those, and
the addresses of the manager's own host. The check is made on each address about to be connected (see
``storage.s3_client``), after name resolution, so a name that resolves elsewhere later cannot rebind
around it. ``OSCAR_PROVIDER_ALLOWED_NETWORKS`` lists networks and host names allowed in spite of the rule.
The operator's own ``minio.default`` is not subject to it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from oscar_manager.errors import Forbidden

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "OSCAR_PROVIDER_ALLOWED_NETWORKS"
# RFC 1122 "this network": Linux connects 0.x.x.x like 0.0.0.0, to this host.
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_FIB_TRIE = Path("/proc/net/fib_trie")
_IF_INET6 = Path("/proc/net/if_inet6")


class ProviderRefused(Forbidden):
    """A service's storage provider would make the manager connect where the operator does not allow."""


def plain(address: Address) -> Address:
    """``address`` with IPv4 inside IPv6 (``::ffff:127.0.0.1``, ``::127.0.0.1``) taken out: the kernel
    connects those to the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if int(address) >> 32 == 0 and int(address) > 1:  # IPv4-compatible (deprecated), not :: or ::1
            return ipaddress.IPv4Address(int(address))
        if address.scope_id is not None:
            return ipaddress.IPv6Address(str(address).split("%", 1)[0])
    return address


def parse_address(text: str) -> Address | None:
    """An IP literal (IPv6 with or without brackets and zone), or ``None`` for a host name."""
    try:
        return ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def _legacy_ipv4(host: str) -> Address | None:
    """What the C library makes of a numeric name in the old forms (``2130706433``, ``127.1``, ``0x7f.1``)."""
    if not host or not all(char in "0123456789abcdefx." for char in host) or not host[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def forbidden_reason(address: Address, own: Iterable[Address]) -> str | None:
    """Why the rule refuses ``address``, or ``None`` if it does not."""
    address = plain(address)
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "an unspecified address"
    if address in {plain(item) for item in own}:
        return "an address of the manager's own host"
    return None


def host_addresses() -> frozenset[Address]:
    """Every address of this host's interfaces: Linux's local IPv4 routes and IPv6 addresses, else what
    the host's name resolves to."""
    found: set[Address] = set()
    with contextlib.suppress(OSError):
        previous = ""
        for line in _FIB_TRIE.read_text().splitlines():
            text = line.strip()
            if text.startswith("|-- "):
                previous = text[4:]
            elif text.startswith("/32 host LOCAL") and previous:
                found.add(ipaddress.IPv4Address(previous))
    with contextlib.suppress(OSError, ValueError):
        for line in _IF_INET6.read_text().splitlines():
            digits = line.split()[0]
            found.add(ipaddress.IPv6Address(int(digits, 16)))
    if not found:
        with contextlib.suppress(OSError):
            for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
                with contextlib.suppress(ValueError):
                    found.add(ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0]))
    return frozenset(found)


def normal_host(host: str) -> str:
    return host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")


def parse_allowed(entries: Iterable[str]) -> tuple[tuple[Network, ...], frozenset[str]]:
    """``OSCAR_PROVIDER_ALLOWED_NETWORKS`` entries as networks (CIDR or single addresses) and host names."""
    networks: list[Network] = []
    hosts: set[str] = set()
    for entry in entries:
        text = normal_host(entry)
        if not text:
            continue
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            # Settings checked the entry: what is not a network is a host name.
            hosts.add(text)
            continue
        networks.append(network)
        if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
            mapped = network.network_address.ipv4_mapped
            if mapped is not None:  # ::ffff:a.b.c.d/n means the IPv4 network
                networks.append(ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}", strict=False))
    return tuple(networks), frozenset(hosts)


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """The rule, the operator's exceptions to it, and the manager's own addresses."""

    allowed_networks: tuple[Network, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    # Addresses the manager listens on (OSCAR_HOST), on top of its interfaces' ones.
    listen_addresses: frozenset[Address] = frozenset()
    # Read at every check: interfaces come and go, and a connection is rare next to its requests.
    interface_addresses: Callable[[], frozenset[Address]] = field(default=host_addresses)

    @classmethod
    def from_settings(cls, allowed: Iterable[str], *, listen_host: str = "") -> EgressPolicy:
        networks, hosts = parse_allowed(allowed)
        listening = parse_address(listen_host)
        return cls(
            allowed_networks=networks,
            allowed_hosts=hosts,
            listen_addresses=frozenset() if listening is None else frozenset({listening}),
        )

    def host_allowed(self, host: str) -> bool:
        return normal_host(host) in self.allowed_hosts

    def address_allowed(self, address: Address) -> bool:
        return any(plain(address) in network or address in network for network in self.allowed_networks)

    def refusal(self, host: str, address: str) -> str | None:
        """Why connecting to ``address`` (what ``host`` resolved to) is refused, or ``None``."""
        if self.host_allowed(host):
            return None
        parsed = parse_address(address)
        if parsed is None:
            return "not an IP address"
        if self.address_allowed(parsed):
            return None
        return forbidden_reason(parsed, self.interface_addresses() | self.listen_addresses)

    def endpoint_refusal(self, endpoint: str) -> str | None:
        """Why an endpoint URL is refused whatever it resolves to (an IP literal the rule refuses, or
        ``localhost``), or ``None``: what can be told when a service is created, before any lookup."""
        try:
            host = normal_host(urlsplit(endpoint).hostname or "")
        except ValueError:
            return None  # the client refuses malformed URLs itself
        if not host or self.host_allowed(host):
            return None
        if host == "localhost" or host.endswith(".localhost"):  # RFC 6761: always loopback
            loopbacks: tuple[Address, ...] = (
                ipaddress.IPv4Address("127.0.0.1"),
                ipaddress.IPv6Address("::1"),
            )
            return None if any(self.address_allowed(item) for item in loopbacks) else "a loopback name"
        address = parse_address(host) or _legacy_ipv4(host)
        if address is None:
            return None
        return self.refusal(host, str(address))

    def guard(self, provider: str, endpoint: str) -> ConnectGuard:
        return ConnectGuard(self, provider, endpoint)


@dataclass(frozen=True, slots=True)
class ConnectGuard:
    """The policy bound to one provider, for the connections of its client."""

    policy: EgressPolicy
    provider: str
    endpoint: str

    def check(self, host: str, address: str) -> str | None:
        return self.policy.refusal(host, address)

    def refused(self, host: str, address: str, reason: str) -> ProviderRefused:
        shown = address if host == address else f"{address} ({host})"
        return ProviderRefused(
            f"storage provider {self.provider!r}: the manager does not connect to {shown}, {reason}; "
            f"the operator may allow it in {SETTING}"
        )
