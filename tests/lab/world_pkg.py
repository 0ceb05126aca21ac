"""The world's package registries: a PEP 503 simple index and an npm registry.

Real clients (pip, npm) install from them, so the artifacts are real: a wheel and an npm
tarball built here, at world start, with the hashes the clients check. Routes are sans-IO
(`PypiSite.route`, `NpmSite.route`: method and path in, `Reply` or None out);
`site_responder` makes one a responder that world_http's `HttpServer` serves, logging every
request like the web server does (so `lab.capture().http_requests()` sees them).
`PrivateIndex` is the simple index behind basic auth (config.PRIVATE_INDEX_USER and
PRIVATE_INDEX_PASSWORD): without them every path answers 401 with a Basic challenge.

  pypi:  GET /simple/                       project list
         GET /simple/<project>/             links to files (sha256 fragment)
         GET /files/<wheel>                 the wheel
  npm:   GET /<package>                     packument (tarball URL on the host asked)
         GET /<package>/-/<name>-<v>.tgz    the tarball
Anything else falls through to the ordinary web routes (GET / says hello).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import html
import io
import json
import re
import tarfile
import zipfile

from tests.lab.config import PRIVATE_INDEX_PASSWORD, PRIVATE_INDEX_USER
from tests.lab.world_http import (
    Reply,
    Request,
    Responder,
    basic_credentials,
    unauthorized,
    web,
)

PACKAGE = "corridor-lab-pkg"
VERSION = "1.0.0"
MODULE = "corridor_lab_pkg"
VALUE = f"{PACKAGE} {VERSION} from the lab"
# A second project whose index page links its file on another host (as some mirrors do):
# discovery cannot know that host ahead, so a policy must name it.
SPLIT_PACKAGE = "corridor-lab-split"
SPLIT_MODULE = "corridor_lab_split"
SPLIT_FILES_HOST = "pypi-files.test"
# Fixed timestamps make the artifacts (and so their hashes) the same on every run.
_ZIP_TIME = (2024, 1, 1, 0, 0, 0)
_TAR_MTIME = 1_704_067_200


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def build_wheel(project: str, module: str, version: str, source: str) -> tuple[str, bytes]:
    """A pure-Python wheel (PEP 427) with one package: (file name, bytes)."""
    dist = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": source.encode(),
        f"{dist}/METADATA": (
            f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n"
            "Summary: a package served by the corridor lab\n"
        ).encode(),
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: corridor-lab\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, _ZIP_TIME), data)
    return f"{module}-{version}-py3-none-any.whl", buffer.getvalue()


def build_npm_tarball(package: str, version: str, source: str) -> bytes:
    """An npm package tarball: package/package.json and package/index.js, gzipped."""
    manifest = {"name": package, "version": version, "main": "index.js", "license": "MIT"}
    files = {
        "package/package.json": json.dumps(manifest, indent=2).encode(),
        "package/index.js": source.encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), _TAR_MTIME, 0o644
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), mtime=0)


def normalize_project(name: str) -> str:
    """PEP 503 name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _html(status: int, body: str) -> Reply:
    data = body.encode()
    return Reply(status, "text/html; charset=utf-8", (data,), len(data))


def _bytes(kind: str, data: bytes) -> Reply:
    return Reply(200, kind, (data,), len(data))


class PypiSite:
    """A PEP 503 simple index with two projects: one whose file is on the same host, and
    one whose file is linked on SPLIT_FILES_HOST."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.links: dict[str, str] = {}  # normalised project -> href of its one file
        for project, module, host in (
            (PACKAGE, MODULE, None),
            (SPLIT_PACKAGE, SPLIT_MODULE, SPLIT_FILES_HOST),
        ):
            name, data = build_wheel(project, module, VERSION, f"VALUE = {VALUE!r}\n")
            self.files[name] = data
            where = f"https://{host}/files/{name}" if host else f"../../files/{name}"
            digest = hashlib.sha256(data).hexdigest()
            self.links[normalize_project(project)] = f"{where}#sha256={digest}"

    def route(self, method: str, path: str) -> Reply | None:
        """The index's answer, or None for paths it does not serve."""
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return None
        if path in ("/simple", "/simple/"):
            items = "".join(f'<a href="{p}/">{p}</a>\n' for p in self.links)
            return _html(200, f"<!DOCTYPE html>\n<html><body>\n{items}</body></html>\n")
        if path.startswith("/simple/"):
            project = normalize_project(path.removeprefix("/simple/").strip("/"))
            if project not in self.links:
                return _html(404, "<html><body>no such project</body></html>\n")
            href = html.escape(self.links[project])
            name = href.rsplit("/", 1)[-1].split("#", 1)[0]
            body = f'<!DOCTYPE html>\n<html><body>\n<a href="{href}">{name}</a>\n</body></html>\n'
            return _html(200, body)
        if path.startswith("/files/") and path.removeprefix("/files/") in self.files:
            return _bytes("application/octet-stream", self.files[path.removeprefix("/files/")])
        return None


class NpmSite:
    """An npm registry with one package."""

    def __init__(self) -> None:
        source = f"module.exports = {{ value: {json.dumps(VALUE)} }};\n"
        self.tarball = build_npm_tarball(PACKAGE, VERSION, source)
        self.tarball_name = f"{PACKAGE}-{VERSION}.tgz"

    def packument(self, host: str) -> dict:
        """The package document; the tarball URL names the host the client asked."""
        integrity = base64.b64encode(hashlib.sha512(self.tarball).digest()).decode()
        version = {
            "name": PACKAGE,
            "version": VERSION,
            "main": "index.js",
            "dist": {
                "tarball": f"https://{host}/{PACKAGE}/-/{self.tarball_name}",
                "shasum": hashlib.sha1(self.tarball).hexdigest(),
                "integrity": f"sha512-{integrity}",
            },
        }
        return {"name": PACKAGE, "dist-tags": {"latest": VERSION}, "versions": {VERSION: version}}

    def route(self, method: str, path: str, host: str) -> Reply | None:
        """The registry's answer, or None for paths it does not serve."""
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return None
        if path == f"/{PACKAGE}":
            data = json.dumps(self.packument(host)).encode()
            return _bytes("application/json", data)
        if path == f"/{PACKAGE}/-/{self.tarball_name}":
            return _bytes("application/octet-stream", self.tarball)
        return None


class PrivateIndex:
    """The simple index behind basic auth: every request without the right user name and
    password gets 401 and a challenge, as a company's private index answers."""

    def __init__(self, user: str, password: str, realm: str = "private index") -> None:
        self.site = PypiSite()
        self._expected = (user, password)
        self._realm = realm

    def route(self, method: str, path: str, headers: dict[str, str]) -> Reply | None:
        """The index's answer, a 401 without the credentials, or None for other paths."""
        if basic_credentials(headers) != self._expected:
            return unauthorized(self._realm)
        return self.site.route(method, path)


Site = PypiSite | NpmSite | PrivateIndex


def site_for(kind: str) -> Site:
    """The site a package service kind (config.PACKAGE_SITES) serves."""
    if kind == "pypi-private":
        return PrivateIndex(PRIVATE_INDEX_USER, PRIVATE_INDEX_PASSWORD)
    return {"pypi": PypiSite, "npm": NpmSite}[kind]()


def site_responder(site: Site) -> Responder:
    """The site as a responder for `HttpServer`: paths it does not serve fall through to
    the ordinary web routes (GET / says hello)."""

    async def respond(request: Request) -> Reply:
        if isinstance(site, NpmSite):
            reply = site.route(request.method, request.path, request.host)
        elif isinstance(site, PrivateIndex):
            reply = site.route(request.method, request.path, request.headers)
        else:
            reply = site.route(request.method, request.path)
        return reply if reply is not None else await web(request)

    return respond
