"""ClientAddress: the key is the direct peer unless a trusted proxy forwarded the request."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_backpressure.ratelimit.middleware import UNKNOWN_CLIENT, ClientAddress


def scope(peer: str | None, *headers: tuple[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "path": "/",
        "client": (peer, 50000) if peer is not None else None,
        "headers": [(name.encode(), value.encode()) for name, value in headers],
    }


PROXIES = ["10.0.0.0/8", "2001:db8:ffff::/48"]


def test_direct_peer_without_trusted_proxies_ignores_forwarded_headers() -> None:
    resolve = ClientAddress()
    assert resolve(scope("203.0.113.9", ("x-forwarded-for", "198.51.100.1"))) == "203.0.113.9"


def test_spoofed_header_from_untrusted_peer_changes_nothing() -> None:
    resolve = ClientAddress(PROXIES)
    assert resolve(scope("203.0.113.9", ("x-forwarded-for", "10.0.0.1, 1.1.1.1"))) == (
        "203.0.113.9"
    )


def test_trusted_proxy_header_read_right_to_left_skipping_trusted_hops() -> None:
    resolve = ClientAddress(PROXIES)
    # The client wrote "6.6.6.6" itself; the proxies appended the real client and a hop.
    header = ("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3")
    assert resolve(scope("10.0.0.2", header)) == "198.51.100.7"


def test_header_lines_are_joined_in_order() -> None:
    resolve = ClientAddress(PROXIES)
    lines = (("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "198.51.100.7"))
    assert resolve(scope("10.0.0.2", *lines)) == "198.51.100.7"


def test_trusted_proxy_without_header_is_the_client() -> None:
    assert ClientAddress(PROXIES)(scope("10.0.0.2")) == "10.0.0.2"


def test_every_hop_trusted_takes_the_farthest() -> None:
    resolve = ClientAddress(PROXIES)
    assert resolve(scope("10.0.0.2", ("x-forwarded-for", "10.9.9.9, 10.1.1.1"))) == "10.9.9.9"


@pytest.mark.parametrize("garbage", ["unknown", "not-an-ip", "", "[::1"])
def test_unparseable_entry_limits_the_proxy_itself(garbage: str) -> None:
    resolve = ClientAddress(PROXIES)
    header = ("x-forwarded-for", f"198.51.100.7, {garbage}")
    assert resolve(scope("10.0.0.2", header)) == "10.0.0.2"


@pytest.mark.parametrize(
    ("entry", "client"),
    [
        ("198.51.100.7:4711", "198.51.100.7"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("2001:DB8::7", "2001:db8::7"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
    ],
)
def test_address_forms_are_normalised(entry: str, client: str) -> None:
    resolve = ClientAddress(PROXIES)
    assert resolve(scope("10.0.0.2", ("x-forwarded-for", entry))) == client


def test_rfc7239_forwarded_header() -> None:
    resolve = ClientAddress(PROXIES, forwarded_header="Forwarded")
    header = (
        "forwarded",
        'for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, For=10.0.0.9;by=10.0.0.1',
    )
    assert resolve(scope("2001:db8:ffff::1", header)) == "2001:db8::7"


def test_forwarded_mode_ignores_x_forwarded_for_and_vice_versa() -> None:
    forwarded = ClientAddress(PROXIES, forwarded_header="forwarded")
    assert forwarded(scope("10.0.0.2", ("x-forwarded-for", "198.51.100.7"))) == "10.0.0.2"
    xff = ClientAddress(PROXIES)
    assert xff(scope("10.0.0.2", ("forwarded", "for=198.51.100.7"))) == "10.0.0.2"


def test_forwarded_element_without_for_limits_the_proxy() -> None:
    resolve = ClientAddress(PROXIES, forwarded_header="forwarded")
    assert resolve(scope("10.0.0.2", ("forwarded", "proto=https"))) == "10.0.0.2"


def test_no_peer_address_shares_one_key() -> None:
    assert ClientAddress(PROXIES)(scope(None)) == UNKNOWN_CLIENT


def test_network_objects_and_single_addresses_are_accepted() -> None:
    resolve = ClientAddress([ipaddress.ip_network("192.168.0.0/16"), "172.16.0.1"])
    assert resolve(scope("172.16.0.1", ("x-forwarded-for", "198.51.100.7"))) == "198.51.100.7"
    assert resolve(scope("172.16.0.2", ("x-forwarded-for", "198.51.100.7"))) == "172.16.0.2"


@pytest.mark.parametrize("bad", ["10.0.0.0/33", "example.com", "", "10.0.0.0/8x"])
def test_invalid_network_names_the_argument(bad: str) -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        ClientAddress(["10.0.0.0/8", bad])


def test_single_string_instead_of_list_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="trusted_proxies"):
        ClientAddress("10.0.0.0/8")


def test_unknown_forwarded_header_names_the_argument() -> None:
    with pytest.raises(ValueError, match="forwarded_header"):
        ClientAddress(PROXIES, forwarded_header="x-real-ip")


def test_trust_memo_stays_bounded() -> None:
    resolve = ClientAddress(PROXIES)
    for index in range(5000):
        resolve(scope(f"198.51.{index // 256}.{index % 256}"))
    assert len(resolve._trusted) <= 4096


def test_repr_names_networks() -> None:
    assert "10.0.0.0/8" in repr(ClientAddress(PROXIES))


ipv4 = st.ip_addresses(v=4).map(str)
client_written = st.lists(
    st.one_of(ipv4, st.text(alphabet="0123456789abcdef.:[] _-unknow", max_size=20)),
    max_size=5,
)


@given(
    spoofed=client_written,
    client=st.ip_addresses(v=4).filter(lambda a: not a.is_private).map(str),
    hops=st.lists(st.integers(1, 254).map(lambda i: f"10.0.0.{i}"), max_size=3),
)
def test_whatever_the_client_writes_the_real_client_is_found(
    spoofed: list[str], client: str, hops: list[str]
) -> None:
    # The client wrote `spoofed`; the first proxy appended the real client, and
    # each further trusted proxy appended the hop it received the request from.
    header = ", ".join([*spoofed, client, *hops])
    resolve = ClientAddress(["10.0.0.0/8"])
    assert resolve(scope("10.0.0.250", ("x-forwarded-for", header))) == client
