"""The SSRF policy: which upstream URLs a route may name, which addresses it may reach, which paths.

A route names one https origin (host and port); a call may reach nothing else. Hostnames are
resolved once per call by the adapter and every address they resolve to is checked here, then
the connection is pinned to the checked address (no second lookup an attacker's DNS could
answer differently). Private, loopback, link-local, metadata and other special addresses are
refused unless an admin marked the route internal.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from vault.errors import ValidationFailed

__all__ = ["Upstream", "parse_upstream", "check_address", "join_path", "path_matches", "check_pattern", "check_query"]

# LDH labels: no IP-like shorthands ("2130706433", "0x7f.1", "017.0.0.1") can pass as a name.
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@-]{1,200}$")
_PATTERN_SEGMENT = re.compile(r"^(\*|\*\*|[A-Za-z0-9._~-]{1,200})$")
_QUERY = re.compile(r"^[A-Za-z0-9._~!$&'()*+,;=:@/?%-]{0,2048}$")
_METADATA = (ipaddress.ip_network("169.254.169.254/32"), ipaddress.ip_network("fd00:ec2::254/128"),
             ipaddress.ip_network("100.100.100.200/32"))


@dataclass(frozen=True)
class Upstream:
    """A route's upstream origin and base path, checked."""

    host: str  # lowercase DNS name, or a canonical IP literal (IPv6 without brackets)
    port: int
    base_path: str  # "" or "/prefix" without a trailing slash

    @property
    def is_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}{self.base_path}{path}"


def parse_upstream(url: str) -> Upstream:
    """Refuse anything but `https://host[:port][/base]`: no userinfo, query, fragment or odd host forms."""
    if not isinstance(url, str) or len(url) > 512 or any(c in url for c in "\\\x00\r\n\t @"):
        raise ValidationFailed("upstream", "must be https://host[:port][/path] without credentials or spaces")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValidationFailed("upstream", "is not a URL") from None
    if parts.scheme != "https":
        raise ValidationFailed("upstream", "must use https")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ValidationFailed("upstream", "must not have a query or fragment")
    netloc = parts.netloc
    host_part, port = netloc, 443
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise ValidationFailed("upstream", "has a malformed IPv6 literal")
        host_part, rest = netloc[1:end], netloc[end + 1:]
        if rest:
            port = _port(rest)
        host = _canonical_ip(host_part, ipv6=True)
    else:
        if ":" in netloc:
            host_part, _, rest = netloc.rpartition(":")
            port = _port(":" + rest)
        host = _host_name(host_part)
    base = parts.path.rstrip("/")
    if base and not all(_SEGMENT.match(s) and s not in (".", "..") for s in base.split("/")[1:]):
        raise ValidationFailed("upstream", "has a path with unsafe segments")
    return Upstream(host=host, port=port, base_path=base)


def _port(text: str) -> int:
    if not re.fullmatch(r":[0-9]{1,5}", text) or not 1 <= int(text[1:]) <= 65535:
        raise ValidationFailed("upstream", "has an invalid port")
    return int(text[1:])


def _canonical_ip(text: str, *, ipv6: bool) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValidationFailed("upstream", "has an invalid IP literal") from None
    if ipv6 != (address.version == 6):
        raise ValidationFailed("upstream", "has an invalid IP literal")
    return str(address)


def _host_name(text: str) -> str:
    host = text.lower()
    if re.fullmatch(r"[0-9.]+", host):
        # Only the canonical dotted quad; ipaddress refuses octal ("017.0.0.1") and short forms.
        return _canonical_ip(host, ipv6=False)
    labels = host.split(".")
    if not 1 <= len(host) <= 253 or not all(_LABEL.match(label) for label in labels):
        raise ValidationFailed("upstream", "host must be a DNS name or a canonical IP literal")
    if labels[-1].isdigit() or re.fullmatch(r"0x[0-9a-f]+", labels[-1]):
        raise ValidationFailed("upstream", "host must be a DNS name or a canonical IP literal")
    return host


def check_address(address: str, *, internal: bool) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address to connect to, if this route may reach it; ValidationFailed with the reason otherwise."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        raise ValidationFailed("upstream", "resolved to an invalid address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in _METADATA):
        raise ValidationFailed("upstream", "resolves to a cloud metadata address")
    if ip.is_unspecified or ip.is_multicast:
        raise ValidationFailed("upstream", "resolves to an unusable address")
    special = ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or not ip.is_global
    if special and not internal:
        raise ValidationFailed("upstream", "resolves to a private, loopback or link-local address "
                                           "(only a route an admin marked internal may)")
    return ip


def check_pattern(pattern: str) -> str:
    """A path pattern: `/segment/*/more` where `*` is one segment and a final `**` any rest."""
    if not pattern.startswith("/") or len(pattern) > 256:
        raise ValidationFailed("paths", "patterns must start with / and be at most 256 characters")
    segments = pattern.split("/")[1:]
    if not all(_PATTERN_SEGMENT.match(s) and s not in (".", "..") for s in segments):
        raise ValidationFailed("paths", "pattern segments must be names, * or a final **")
    if "**" in segments[:-1]:
        raise ValidationFailed("paths", "** may only end a pattern")
    return pattern


def join_path(path: str) -> str:
    """The caller's path below the route, checked: no traversal, no encoded separators, no odd bytes."""
    if len(path) > 1024:
        raise ValidationFailed("path", "is too long")
    segments = path.split("/") if path else []
    for segment in segments:
        lowered = segment.lower()
        if (not _SEGMENT.match(segment) or segment in (".", "..") or "%2e" in lowered or "%2f" in lowered
                or "%5c" in lowered or "%00" in lowered):
            raise ValidationFailed("path", "has an unsafe segment")
    return "/" + "/".join(segments)


def path_matches(path: str, pattern: str) -> bool:
    have, want = path.split("/")[1:], pattern.split("/")[1:]
    for index, expected in enumerate(want):
        if expected == "**":
            return len(have) > index
        if index >= len(have):
            return False
        if expected != "*" and have[index] != expected:
            return False
    return len(have) == len(want)


def check_query(query: str) -> str:
    if not _QUERY.match(query):
        raise ValidationFailed("query", "has unsafe characters")
    return query
