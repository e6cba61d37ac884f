"""The address policy for http(s) media URLs: refused by default, reachable when allow-listed,
checked on the address actually connected to (names, literals, redirects), against a real
local HTTP server."""

import asyncio
import ipaddress
import socket

import pytest
from pydantic import ValidationError

from internvl_batch.media import guarded_http
from internvl_batch.media.errors import URLNotAllowed
from internvl_batch.media.fetch import FetchConfig, Fetcher, FetchStats
from internvl_batch.media.ssrf import AddressPolicy, literal_address, refused_reason


def fetcher(*allowed: str, **config) -> Fetcher:
    # A filesystem of its own per Fetcher: fsspec would otherwise share one (and its DNS cache) across tests.
    options = {"http": {"skip_instance_cache": True}}
    return Fetcher(
        FetchConfig(allowed_private_hosts=list(allowed), storage_options=options, max_attempts=2, **config),
        sleep=lambda s: None,
    )


@pytest.fixture(autouse=True)
def fresh(http_server):
    http_server.reset()
    http_server.files["/a.jpg"] = b"image bytes"


# -- literal hosts: refused before any connection, in every spelling --------------------------------

REFUSED_HOSTS = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "2130706433": "loopback",  # decimal
    "0x7f000001": "loopback",  # hex
    "0x7f.1": "loopback",
    "0177.0.0.1": "loopback",  # octal
    "127.1": "loopback",
    "[::1]": "loopback",
    "[::ffff:127.0.0.1]": "loopback",  # IPv4-mapped
    "[::ffff:7f00:1]": "loopback",
    "169.254.169.254": "link-local",  # cloud metadata
    "[::ffff:169.254.169.254]": "link-local",
    "[64:ff9b::a9fe:a9fe]": "carries 169.254.169.254",  # NAT64
    "[2002:a9fe:a9fe::1]": "carries 169.254.169.254",  # 6to4
    "[fd00:ec2::254]": "unique local",  # AWS metadata over IPv6
    "[fe80::1]": "link-local",
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.1.1": "private",
    "100.64.0.1": "carrier-grade NAT",
    "0.0.0.0": "unspecified",
    "0": "unspecified",
    "[::]": "unspecified",
    "224.0.0.251": "multicast",
    "[ff02::1]": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "192.0.0.192": "IETF protocol",
    "198.18.0.1": "benchmarking",
}


@pytest.mark.parametrize("host, reason", REFUSED_HOSTS.items(), ids=REFUSED_HOSTS.keys())
def test_non_public_literal_hosts_are_refused(host, reason):
    f = fetcher()
    url = f"http://{host}:9/latest/meta-data/iam"
    with pytest.raises(URLNotAllowed, match=reason) as info:
        f.fetch(url)
    message = str(info.value)
    assert message.startswith(f"{url}: ") and "fetch.allowed_private_hosts" in message
    assert info.value.status == "fetch_error"
    assert f.stats == FetchStats(fetches=1, failures=1)  # not retried


@pytest.mark.parametrize("host", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "example.com", "cafe.be"])
def test_public_hosts_pass_the_policy(host):
    assert AddressPolicy().host_refusal(host) is None


def test_every_spelling_is_one_address():
    spellings = ["127.0.0.1", "2130706433", "0x7f000001", "0x7f.1", "0177.0.0.1", "127.1", "[127.0.0.1]"]
    assert {literal_address(s) for s in spellings} == {ipaddress.ip_address("127.0.0.1")}
    assert literal_address("media.example.com") is None and literal_address("cafe.be") is None
    assert refused_reason(ipaddress.ip_address("::ffff:8.8.8.8")) is None


# -- a real server on loopback ----------------------------------------------------------------------


def test_loopback_server_is_refused_by_default_and_reachable_when_allow_listed(http_server):
    port = http_server.port
    for url in (f"http://127.0.0.1:{port}/a.jpg", f"http://localhost:{port}/a.jpg"):
        with pytest.raises(URLNotAllowed, match="loopback"):
            fetcher().fetch(url)
    assert http_server.requests == []  # nothing reached the server
    allowed = fetcher("127.0.0.0/8", "::1")
    assert allowed.fetch(f"http://127.0.0.1:{port}/a.jpg") == b"image bytes"
    assert allowed.fetch(f"http://localhost:{port}/a.jpg") == b"image bytes"


def test_a_name_resolving_to_loopback_is_refused_at_connection_time(http_server):
    url = f"http://localhost:{http_server.port}/a.jpg"
    with pytest.raises(
        URLNotAllowed, match=r"host 'localhost' resolves only to refused addresses \(127\.0\.0\.1 is a loopback address"
    ):
        fetcher().fetch(url)
    assert fetcher().check(url).startswith(f"{url}: host 'localhost' resolves only to refused addresses")


def test_allow_listed_names_open_only_themselves(http_server):
    port = http_server.port
    by_name = fetcher("localhost")
    assert by_name.fetch(f"http://localhost:{port}/a.jpg") == b"image bytes"
    with pytest.raises(URLNotAllowed, match="127.0.0.1 is a loopback address"):
        by_name.fetch(f"http://127.0.0.1:{port}/a.jpg")
    wildcard = fetcher("*.localhost")
    with pytest.raises(URLNotAllowed):
        wildcard.fetch(f"http://localhost:{port}/a.jpg")
    other_network = fetcher("10.0.0.0/8")
    with pytest.raises(URLNotAllowed):
        other_network.fetch(f"http://127.0.0.1:{port}/a.jpg")


def test_redirects_are_checked_on_every_hop(http_server):
    port = http_server.port
    f = fetcher("localhost")
    # An allowed host redirecting to an allowed host is followed...
    assert f.fetch(f"http://localhost:{port}/redirect?to=http://localhost:{port}/a.jpg") == b"image bytes"
    # ...to a refused one is not, whatever the spelling.
    for target in (
        f"http://127.0.0.1:{port}/a.jpg",
        f"http://[::ffff:127.0.0.1]:{port}/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
    ):
        http_server.reset()
        with pytest.raises(URLNotAllowed, match="refused"):
            f.fetch(f"http://localhost:{port}/redirect?to={target}")
        assert [path for _, path, _ in http_server.requests] == ["/redirect"]


# -- DNS: the address checked is the address connected to -----------------------------------------


class StubResolver:
    """Stands in for DNS (no DNS server can be set up here): names map to chosen addresses."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.asked.append(host)
        return [
            {"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
            for a in self.answers[host]
        ]

    async def close(self):
        pass


def test_names_are_checked_on_what_they_resolve_to(http_server, monkeypatch):
    stub = StubResolver({"media.example": ["127.0.0.1"]})
    monkeypatch.setattr(guarded_http, "system_resolver", lambda: stub)
    url = f"http://media.example:{http_server.port}/a.jpg"
    with pytest.raises(
        URLNotAllowed, match=r"host 'media.example' resolves only to refused addresses \(127.0.0.1 is a loopback"
    ):
        fetcher().fetch(url)
    # Allowed, the fetch connects to the address the guarded resolver returned: the name
    # itself exists in no DNS, so reaching the server proves no second lookup happened.
    assert fetcher("127.0.0.1").fetch(url) == b"image bytes"
    assert "media.example" in stub.asked


def test_refused_addresses_are_removed_from_a_mixed_answer():
    stub = StubResolver({"rebind.example": ["127.0.0.1", "93.184.215.14", "169.254.169.254", "::1"]})
    resolver = guarded_http.GuardedResolver(AddressPolicy(), stub)
    answer = asyncio.run(resolver.resolve("rebind.example", 80))
    assert [r["host"] for r in answer] == ["93.184.215.14"]


# -- config -------------------------------------------------------------------------------------------


def test_allow_list_entries_are_validated():
    with pytest.raises(ValidationError, match="allowed_private_hosts"):
        FetchConfig(allowed_private_hosts=["10.0.0.0/33"])
    with pytest.raises(ValidationError, match="neither an IP network"):
        FetchConfig(allowed_private_hosts=["not a host"])
    FetchConfig(
        allowed_private_hosts=["10.0.0.0/8", "fd00::/8", "127.0.0.1", "minio.storage.svc", "*.svc.cluster.local"]
    )


def test_a_connector_in_client_kwargs_cannot_bypass_the_policy():
    with pytest.raises(ValueError, match="bypass the address policy"):
        asyncio.run(guarded_http.guarded_client(AddressPolicy(), connector=object()))


@pytest.mark.parametrize("url, message", [("http://[::1/a.jpg", "not a valid URL"), ("http:///a.jpg", "no host")])
def test_malformed_http_urls_are_refused_without_a_connection(url, message):
    with pytest.raises(URLNotAllowed, match=message):
        fetcher().fetch(url)
