"""Package downloads recognised from request URLs. Pure: a URL in, a package or None out.

The gateway sees full URLs for plain HTTP and, under TLS inspection, for HTTPS; it calls
`parse(url)` for each request and records a `package` event for what it recognises.
Registries are discovered, never written down (a company mirror has its own host), so
recognition goes by the shape of the path, not by host; only GitHub's own hosts are named,
because a release asset or an archive is only recognisable there.

Shapes (each one tested on real URL shapes in tests/audit/test_audit_packages.py):
- git smart HTTP fetch: `.../info/refs?service=git-upload-pack`, `.../git-upload-pack`
- GitHub: `/OWNER/REPO/releases/download/TAG/ASSET`, `/OWNER/REPO/archive/...`, codeload
- Go module proxy: `/MODULE/@v/VERSION.zip|.mod|.info` (case-escaped with `!`)
- npm tarball: `/NAME/-/NAME-VERSION.tgz`, `/@SCOPE/NAME/-/NAME-VERSION.tgz`, `@SCOPE%2fNAME`
- Cargo crate: `/crates/NAME/NAME-VERSION.crate`, `/api/v1/crates/NAME/VERSION/download`
- Debian: `.../pool/COMPONENT/P/SOURCE/NAME_VERSION_ARCH.deb` (and `.udeb`; `%3a` epochs)
- Python: wheels (`NAME-VERSION(-BUILD)-PY-ABI-PLATFORM.whl`) anywhere; sdists
  (`NAME-VERSION.tar.gz|.zip|.tar.bz2`) under a `packages` or devpi `+f` directory.
Index pages, version lists and search APIs are not downloads and give None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from corridor.audit.events import Event, Kind

PYPI = "pypi"  # ecosystem names are Package URL (purl) types
NPM = "npm"
CARGO = "cargo"
GOLANG = "golang"
DEB = "deb"
GITHUB = "github"
GIT = "git"
ECOSYSTEMS = (PYPI, NPM, CARGO, GOLANG, DEB, GITHUB, GIT)

GITHUB_HOSTS = frozenset({"github.com", "www.github.com"})
GITHUB_CODELOAD = "codeload.github.com"
MAX_URL = 8192  # longer is not a registry download; parsing it is not worth the time

_SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tgz")
_SDIST_DIRS = frozenset({"packages", "+f"})  # PyPI-style file hosts, devpi
_ARCHIVE_SUFFIXES = (".tar.gz", ".zip")
# PEP 440 versions, loosely (what an sdist file name carries after its last '-').
_PY_VERSION = re.compile(r"v?\d+(?:[._+!-]?[0-9A-Za-z]+)*")
_PEP503 = re.compile(r"[-_.]+")
_GO_ZIP = (".zip", ".mod", ".info")


@dataclass(frozen=True, slots=True)
class Package:
    """A recognised download: ecosystem (a purl type), name, version and file."""

    ecosystem: str
    name: str
    version: str | None  # None for a git fetch: the URL does not say which commit
    file: str | None = None  # the artifact's file name, when the URL names one

    @property
    def purl(self) -> str:
        """The Package URL, e.g. `pkg:npm/%40types/node@20.11.5`."""
        name = self.name.replace("@", "%40")
        version = f"@{self.version}" if self.version else ""
        return f"pkg:{self.ecosystem}/{name}{version}"

    def to_data(self, url: str) -> dict[str, str | None]:
        """The `data` of a `package` event."""
        return {
            "ecosystem": self.ecosystem,
            "name": self.name,
            "version": self.version,
            "file": self.file,
            "url": url,
        }


def package_event(
    session: str,
    ts: float,
    url: str,
    package: Package,
    *,
    host: str | None = None,
    port: int | None = None,
    conn_id: int | None = None,
) -> Event:
    """The `package` event the gateway records for a recognised download."""
    return Event(
        session, Kind.PACKAGE, ts, host=host, port=port, conn_id=conn_id,
        data=package.to_data(url),
    )  # fmt: skip


def parse(url: str) -> Package | None:
    """The package a request URL downloads, or None. Never raises on any text."""
    if not isinstance(url, str) or len(url) > MAX_URL:
        return None
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port  # a malformed port is not a request any client sent
    except ValueError:  # e.g. a bad port or an unbalanced IPv6 bracket
        return None
    raw = [s for s in parts.path.split("/") if s]
    segments = [unquote(s) for s in raw]
    for parser in (_git, _github, _golang, _npm, _cargo, _deb, _pypi):
        found = parser(host, segments, raw, parts.query)
        if found is not None:
            return found
    return None


def _git(host: str, segs: list[str], raw: list[str], query: str) -> Package | None:
    if segs[-2:] == ["info", "refs"]:
        if parse_qs(query).get("service") != ["git-upload-pack"]:
            return None
        repo = segs[:-2]
    elif segs[-1:] == ["git-upload-pack"]:
        repo = segs[:-1]
    else:
        return None
    if not repo:
        return None
    path = "/".join(repo)
    path = path.removesuffix(".git")
    return Package(GIT, f"{host}/{path}" if host else path, None)


def _github(host: str, segs: list[str], raw: list[str], query: str) -> Package | None:
    if host == GITHUB_CODELOAD and len(segs) >= 4 and segs[2] in ("tar.gz", "zip", "legacy.tar.gz"):
        # /OWNER/REPO/tar.gz/refs/tags/TAG or /OWNER/REPO/zip/TAG
        ref = segs[3:]
        tag = ref[-1] if ref[:2] == ["refs", "tags"] or len(ref) == 1 else "/".join(ref)
        return Package(GITHUB, f"{segs[0]}/{segs[1]}", tag)
    if host not in GITHUB_HOSTS or len(segs) < 4:
        return None
    repo = f"{segs[0]}/{segs[1]}"
    if segs[2:4] == ["releases", "download"] and len(segs) == 6:
        return Package(GITHUB, repo, segs[4], segs[5])
    if segs[2] == "archive":
        # /archive/refs/tags/TAG.tar.gz, /archive/TAG.zip, /archive/refs/heads/BRANCH.zip
        last = segs[-1]
        suffix = next((s for s in _ARCHIVE_SUFFIXES if last.endswith(s)), None)
        if suffix is None:
            return None
        return Package(GITHUB, repo, last[: -len(suffix)], last)
    return None


def _golang(host: str, segs: list[str], raw: list[str], query: str) -> Package | None:
    if len(segs) < 3 or segs[-2] != "@v":
        return None
    last = segs[-1]
    suffix = next((s for s in _GO_ZIP if last.endswith(s)), None)
    if suffix is None:  # @v/list: a listing, not a download
        return None
    module = _go_unescape("/".join(segs[:-2]))
    version = _go_unescape(last[: -len(suffix)])
    if module is None or version is None or not version:
        return None
    return Package(GOLANG, module, version, last)


def _go_unescape(text: str) -> str | None:
    """Module proxy case escaping: `!a` stands for `A` (https://go.dev/ref/mod#goproxy-protocol)."""
    out = []
    chars = iter(text)
    for c in chars:
        if c == "!":
            nxt = next(chars, "")
            if not ("a" <= nxt <= "z"):
                return None
            out.append(nxt.upper())
        elif "A" <= c <= "Z":
            return None  # an unescaped capital is not a valid proxy path
        else:
            out.append(c)
    return "".join(out)


def _npm(host: str, segs: list[str], raw: list[str], query: str) -> Package | None:
    if len(segs) < 3 or segs[-2] != "-" or not segs[-1].endswith(".tgz"):
        return None
    before = segs[:-2]
    if before[-1].startswith("@") and "/" in before[-1]:  # @scope%2fname
        name = before[-1]
    elif len(before) >= 2 and before[-2].startswith("@"):
        name = f"{before[-2]}/{before[-1]}"
    else:
        name = before[-1]
    base = name.rsplit("/", 1)[-1]
    file = segs[-1]
    prefix = base + "-"
    if not file.startswith(prefix) or len(file) <= len(prefix) + len(".tgz"):
        return None
    return Package(NPM, name, file[len(prefix) : -len(".tgz")], file)


def _cargo(host: str, segs: list[str], raw: list[str], query: str) -> Package | None:
    # a cargo registry's web API download path: /api/v1/crates/NAME/VERSION/download
    if len(segs) >= 5 and segs[-1] == "download" and segs[-4] == "crates":
        return Package(CARGO, segs[-3], segs[-2])
    last = segs[-1] if segs else ""
    if not last.endswith(".crate"):
        return None
    stem = last[: -len(".crate")]
    parent = segs[-2] if len(segs) >= 2 else ""
    if parent and stem.startswith(parent + "-"):
        return Package(CARGO, parent, stem[len(parent) + 1 :], last)
    match = re.fullmatch(r"(.+?)-(\d.*)", stem)
    if match is None:
        return None
    return Package(CARGO, match.group(1), match.group(2), last)


def _deb(host: str, segs: list[str], raw: list[str], query: str) -> Package | None:
    last = segs[-1] if segs else ""
    suffix = ".deb" if last.endswith(".deb") else ".udeb" if last.endswith(".udeb") else None
    if suffix is None:
        return None
    fields = last[: -len(suffix)].split("_")
    if len(fields) != 3 or not all(fields):
        return None
    name, version, _arch = fields
    return Package(DEB, name, version, last)


def _pypi(host: str, segs: list[str], raw: list[str], query: str) -> Package | None:
    last = segs[-1] if segs else ""
    if last.endswith(".whl"):
        fields = last[: -len(".whl")].split("-")
        if len(fields) not in (5, 6) or not all(fields):
            return None
        return Package(PYPI, _pep503(fields[0]), fields[1], last)
    suffix = next((s for s in _SDIST_SUFFIXES if last.endswith(s)), None)
    if suffix is None or not _SDIST_DIRS.intersection(segs[:-1]):
        return None
    stem = last[: -len(suffix)]
    name, sep, version = stem.rpartition("-")
    if not sep or not name or not _PY_VERSION.fullmatch(version):
        return None
    return Package(PYPI, _pep503(name), version, last)


def _pep503(name: str) -> str:
    """The normalised project name (PEP 503): lower case, runs of -_. as one '-'."""
    return _PEP503.sub("-", name).lower()
