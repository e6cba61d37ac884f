"""aiohttp sessions that obey an `ssrf.AddressPolicy`, for fsspec's HTTP filesystem.

fsspec builds its aiohttp session through the `get_client` storage option; the Fetcher
sets it to `guarded_client`, whose connector checks every connection (see `ssrf`).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohttp

from internvl_batch.media.ssrf import REFUSED_HINT, AddressNotAllowed, AddressPolicy, literal_address


def system_resolver() -> Any:
    """aiohttp's default resolver (getaddrinfo in a thread, or aiodns when installed).

    A module-level function so a test can stand in a resolver that maps names to chosen
    addresses: no DNS server can be configured on a test machine."""
    return aiohttp.resolver.DefaultResolver()


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """Removes refused addresses from the base resolver's answer; refuses the host if none is left."""

    def __init__(self, policy: AddressPolicy, base: aiohttp.abc.AbstractResolver):
        self._policy = policy
        self._base = base

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        results = await self._base.resolve(host, port, family=family)
        if self._policy.allows_name(host):
            return results
        allowed, refusals = [], []
        for result in results:
            try:
                reason = self._policy.refusal(ipaddress.ip_address(result["host"]))
            except ValueError:
                reason = f"{result['host']!r}, not an IP address"
            if reason is None:
                allowed.append(result)
            else:
                refusals.append(reason)
        if not allowed:
            found = "; ".join(refusals) or "no address"
            raise AddressNotAllowed(f"host {host!r} resolves only to refused addresses ({found}); {REFUSED_HINT}")
        return allowed

    async def close(self) -> None:
        await self._base.close()


class GuardedConnector(aiohttp.TCPConnector):
    """Checks IP-literal hosts itself (aiohttp resolves no literal); names go through GuardedResolver."""

    def __init__(self, policy: AddressPolicy, **kwargs: Any):
        super().__init__(resolver=GuardedResolver(policy, system_resolver()), **kwargs)
        self._policy = policy

    async def connect(self, req: Any, traces: Any, timeout: Any) -> Any:
        host = req.url.raw_host
        if literal_address(host) is not None:
            reason = self._policy.host_refusal(host)
            if reason is not None:
                raise AddressNotAllowed(reason)
        return await super().connect(req, traces, timeout)


async def guarded_client(policy: AddressPolicy, **client_kwargs: Any) -> aiohttp.ClientSession:
    """An aiohttp ClientSession whose connections obey `policy`: fsspec's `get_client` hook.

    Async because fsspec awaits it on its own event loop, which the connector binds to."""
    if "connector" in client_kwargs:
        raise ValueError("client_kwargs.connector cannot be set for http(s): it would bypass the address policy")
    return aiohttp.ClientSession(connector=GuardedConnector(policy), **client_kwargs)
