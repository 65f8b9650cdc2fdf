"""The SSRF policy: upstream URLs, resolved addresses and caller paths."""

from __future__ import annotations

import pytest

from vault.errors import ValidationFailed
from vault.relay.addresses import check_address, check_query, join_path, parse_upstream, path_matches


@pytest.mark.parametrize("url", [
    "http://api.example.com",                   # not https
    "https://user:pw@api.example.com",          # credentials
    "https://api.example.com@127.0.0.1",        # `@` trick
    "https://127.0.0.1#@api.example.com",       # fragment trick
    "https://api.example.com/?x=1",             # query
    "https://2130706433",                       # decimal IPv4
    "https://0x7f000001",                       # hex IPv4
    "https://017700000001",                     # octal IPv4
    "https://0177.0.0.1",                       # octal dotted
    "https://127.1",                            # short form
    "https://0x7f.0.0.1",                       # hex dotted
    "https://[::1",                             # broken IPv6
    "https://api.example.com:99999",            # bad port
    "https://api.example.com/../admin",         # traversal in the base
    "https://api.example.com\\@evil.test",      # backslash
    "https://exa mple.com",                     # space
    "https://ex_ample.com",                     # not a DNS name
])
def test_unsafe_upstream_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationFailed):
        parse_upstream(url)


def test_safe_upstream_urls_parse_to_host_port_and_base() -> None:
    up = parse_upstream("https://API.Example.com:8443/v2/")
    assert (up.host, up.port, up.base_path) == ("api.example.com", 8443, "/v2")
    assert parse_upstream("https://[::1]:9443").host == "::1"
    assert parse_upstream("https://127.0.0.1").is_literal


@pytest.mark.parametrize("address", ["127.0.0.1", "127.9.9.9", "10.0.0.1", "172.16.0.1", "192.168.1.1",
                                     "169.254.169.254", "169.254.1.1", "::1", "fe80::1", "fc00::1",
                                     "::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1", "224.0.0.1", "fd00:ec2::254"])
def test_special_addresses_are_refused_unless_internal(address: str) -> None:
    with pytest.raises(ValidationFailed):
        check_address(address, internal=False)


def test_metadata_and_unspecified_addresses_are_refused_even_when_internal() -> None:
    for address in ("169.254.169.254", "fd00:ec2::254", "0.0.0.0", "::"):
        with pytest.raises(ValidationFailed):
            check_address(address, internal=True)
    assert str(check_address("127.0.0.1", internal=True)) == "127.0.0.1"
    assert str(check_address("93.184.215.14", internal=False)) == "93.184.215.14"


@pytest.mark.parametrize("path", ["../admin", "a/../../b", "a/./b", "a/%2e%2e/b", "a%2fb", "a\\b", "a/\x00",
                                  "a b", "a/%00", "a//b"])
def test_unsafe_caller_paths_are_refused(path: str) -> None:
    with pytest.raises(ValidationFailed):
        assert path_matches(join_path(path), "/**")


def test_patterns_match_segments() -> None:
    assert path_matches(join_path("v1/customers/cus_1/cards"), "/v1/customers/*/cards")
    assert not path_matches(join_path("v1/customers/cus_1/cards/x"), "/v1/customers/*/cards")
    assert not path_matches(join_path("v1/customers/cards"), "/v1/customers/*/cards")
    assert path_matches(join_path("v1/x/y/z"), "/v1/**") and not path_matches(join_path("v1"), "/v1/**")
    with pytest.raises(ValidationFailed):
        check_query("a=1\r\nHost: evil")
