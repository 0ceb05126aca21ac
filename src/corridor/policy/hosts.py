"""Host names, IP literals and host patterns: pure functions, no I/O.

Every name the policy sees goes through `normalize_host` first, on both sides: the
pattern in the policy file and the name the client asked for. Matching is then plain
string comparison of ASCII (A-label) names, so case, a trailing dot or a Unicode
spelling can never make one host look like another.

IDN conversion uses Python's built-in IDNA 2003 codec (nameprep + punycode). It differs
from IDNA 2008 for a handful of characters (e.g. 'ß' becomes "ss"); that cannot open a
hole, because the gateway dials the normalised name it decided on, never the raw one.
"""

from __future__ import annotations

import encodings.idna
import functools
import ipaddress
import re
from dataclasses import dataclass
from enum import Enum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_NAME_LENGTH = 253  # RFC 1035 2.3.4: 255 octets on the wire = 253 characters in text
MAX_LABEL_LENGTH = 63  # RFC 1035 2.3.4

# Label separators that IDNA (RFC 3490 3.1) treats as a full stop; clients map them to
# "." before resolving, so we must too or a rule could be dodged by spelling the dot.
_IDNA_DOTS = re.compile("[\u3002\uff0e\uff61]")
# Letters, digits, hyphen (RFC 1123) plus underscore, which real DNS uses (_dmarc, SRV).
_LABEL_CHARS = re.compile(r"[a-z0-9_-]+")
# A last label that is all digits (or 0x-hex) makes resolvers and URL parsers read the
# whole name as an IPv4 address ("127.1", "2130706433"): it is never a host name.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")

# Suffixes under which anyone can register a name, so a wildcard directly on them
# matches unrelated owners. Any single label (com, net, io, dev, test...) counts too;
# this list adds the common multi-label ones. It is deliberately small: a fuller copy
# of the Public Suffix List may replace it later.
PUBLIC_SUFFIXES: frozenset[str] = frozenset(
    {
        # country-code second levels
        "co.uk", "org.uk", "ac.uk", "gov.uk", "me.uk", "ltd.uk", "plc.uk",
        "com.au", "net.au", "org.au", "edu.au", "gov.au",
        "co.nz", "org.nz", "net.nz",
        "co.jp", "ne.jp", "or.jp", "ac.jp", "go.jp",
        "co.kr", "or.kr",
        "com.br", "net.br", "org.br",
        "com.cn", "net.cn", "org.cn",
        "com.mx", "com.ar", "com.tr", "com.tw", "com.hk", "com.sg", "com.my",
        "co.in", "net.in", "org.in", "co.za", "co.il", "co.id", "com.ua",
        # hosting platforms where each subdomain is a different customer
        "github.io", "gitlab.io", "pages.dev", "workers.dev", "netlify.app",
        "vercel.app", "herokuapp.com", "appspot.com", "web.app", "firebaseapp.com",
        "blogspot.com", "azurewebsites.net", "cloudfront.net", "s3.amazonaws.com",
        "readthedocs.io", "ngrok.io",
    }
)  # fmt: skip


class InvalidHost(ValueError):
    """A host name or host pattern that cannot be used; `reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_ip_literal(s: str) -> IPAddress | None:
    """Return the address if `s` is an IP literal ("10.0.0.1", "::1", "[::1]"), else None.

    Only the canonical forms that `ipaddress` accepts: shorthand IPv4 such as "127.1" or
    "0x7f.1" is not an address here (and `normalize_host` refuses it as a name).
    IPv6 zone ids ("fe80::1%eth0") are refused: they name an interface of this machine.
    """
    bracketed = s.startswith("[") and s.endswith("]")
    text = s[1:-1] if bracketed else s
    if "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if bracketed and address.version != 6:
        return None  # brackets are for IPv6 only (RFC 3986 3.2.2)
    return address


class InvalidNetwork(ValueError):
    """Not an address range; `fixed` is the range meant, when only host bits were set."""

    def __init__(self, fixed: IPNetwork | None = None):
        super().__init__("not an address range" if fixed is None else f"did you mean {fixed}?")
        self.fixed = fixed


def parse_network(text: str) -> IPNetwork:
    """An address range "ADDRESS/LEN" (or one address), strictly: no bits set after the
    prefix. Raises InvalidNetwork, with the range meant when that was the only fault."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        fixed = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidNetwork() from None
    raise InvalidNetwork(fixed)


def normalize_host(name: str) -> str:
    """Return the canonical form of a host name: lower case, no trailing dot, A-labels.

    Raises `InvalidHost` for anything that is not a usable DNS name: empty, too long,
    an empty or over-long label, characters outside letters/digits/hyphen/underscore,
    a label starting or ending with a hyphen, or a name that reads as an IPv4 address.
    """
    if not isinstance(name, str):
        raise InvalidHost("a host name must be text")
    return _normalize(name)


# Every request names its host: the same few names again and again. Invalid names raise
# and are not remembered; the bound keeps hostile variety from growing the cache.
@functools.lru_cache(maxsize=4096)
def _normalize(name: str) -> str:
    if name == "":
        raise InvalidHost("empty host name")
    if len(name) > 4 * MAX_NAME_LENGTH:
        # Bound the work on hostile input; no Unicode name this long fits in 253 A-label chars.
        raise InvalidHost(f"host name longer than {MAX_NAME_LENGTH} characters")
    text = _IDNA_DOTS.sub(".", name)
    if text.endswith("."):
        text = text[:-1]  # one trailing dot marks the DNS root; it names the same host
    labels = [_normalize_label(label) for label in text.split(".")]
    result = ".".join(labels)
    if len(result) > MAX_NAME_LENGTH:
        raise InvalidHost(f"host name longer than {MAX_NAME_LENGTH} characters")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise InvalidHost("ends in a number, so it reads as an IP address, not a host name")
    return result


def _normalize_label(label: str) -> str:
    if label == "":
        raise InvalidHost("empty label (two dots in a row, or a leading dot)")
    for ch in label:
        # Check the ASCII characters first: punycode would copy them through unchanged.
        if ch.isascii() and not _LABEL_CHARS.fullmatch(ch.lower()):
            raise InvalidHost(f"{ch!r} is not allowed in a host name")
    if label.isascii():
        ascii_label = label.lower()
    else:
        try:
            ascii_label = encodings.idna.ToASCII(label).decode("ascii").lower()
        except UnicodeError as e:
            raise InvalidHost(f"{label!r} is not a valid international label ({e})") from None
    if ascii_label == "":
        raise InvalidHost(f"{label!r} is empty once normalised")
    if len(ascii_label) > MAX_LABEL_LENGTH:
        raise InvalidHost(f"label longer than {MAX_LABEL_LENGTH} characters")
    if not _LABEL_CHARS.fullmatch(ascii_label):
        raise InvalidHost(f"label {label!r} has characters not allowed in a host name")
    if ascii_label.startswith("-") or ascii_label.endswith("-"):
        raise InvalidHost(f"label {ascii_label!r} starts or ends with a hyphen")
    return ascii_label


class PatternKind(Enum):
    """How a host pattern matches; the value is the prefix written in the policy."""

    EXACT = ""  # example.com: that name only
    SUBDOMAINS = "*."  # *.example.com: any name below it, at any depth, not the apex
    APEX_AND_SUBDOMAINS = "**."  # **.example.com: the apex and everything below
    ANY = "*"  # *: every host (broad)


@dataclass(frozen=True, slots=True)
class HostPattern:
    """A parsed host pattern; `domain` is normalised ("" for ANY)."""

    kind: PatternKind
    domain: str

    def __str__(self) -> str:
        if self.kind is PatternKind.ANY:
            return "*"
        return self.kind.value + self.domain

    def matches(self, host: str) -> bool:
        """Whether an already normalised host name matches this pattern."""
        if self.kind is PatternKind.ANY:
            return True
        if self.kind is PatternKind.EXACT:
            return host == self.domain
        below = host.endswith("." + self.domain)
        if self.kind is PatternKind.SUBDOMAINS:
            return below
        return below or host == self.domain

    def broad_reason(self) -> str | None:
        """Why this pattern reaches hosts of many unrelated owners, or None if it does not."""
        if self.kind is PatternKind.ANY:
            return "'*' matches every host"
        if self.kind is PatternKind.EXACT:
            return None
        if "." not in self.domain:
            return f"{self} matches every name under the top-level domain {self.domain!r}"
        if self.domain in PUBLIC_SUFFIXES:
            return f"{self} matches every name under the public suffix {self.domain!r}"
        return None


def parse_host_pattern(text: str) -> HostPattern:
    """Parse "example.com", "*.example.com", "**.example.com" or "*".

    A wildcard is only allowed as the whole first label. Raises `InvalidHost`.
    """
    if not isinstance(text, str):
        raise InvalidHost("a host pattern must be text")
    if text == "*":
        return HostPattern(PatternKind.ANY, "")
    if text == "**":
        raise InvalidHost(
            "'**' needs a domain after it ('**.example.com'); '*' alone is every host"
        )
    for kind in (PatternKind.APEX_AND_SUBDOMAINS, PatternKind.SUBDOMAINS):
        if text.startswith(kind.value):
            rest = text[len(kind.value) :]
            break
    else:
        kind, rest = PatternKind.EXACT, text
    if "*" in rest:
        raise InvalidHost("a wildcard may only be the whole first label ('*.' or '**.')")
    return HostPattern(kind, normalize_host(rest))
