"""The world's package registries: a PEP 503 simple index and an npm registry.

Real clients (pip, npm) install from them, so the artifacts are real: a wheel and an npm
tarball built here, at world start, with the hashes the clients check. Routes are sans-IO
(`PypiSite.route`, `NpmSite.route`: method and path in, `Reply` or None out);
`PackageServer` serves them over HTTP/1.1 with h11 and logs every request like the web
server does (so `lab.capture().http_requests()` sees them).

  pypi:  GET /simple/                       project list
         GET /simple/<project>/             links to files (sha256 fragment)
         GET /files/<wheel>                 the wheel
  npm:   GET /<package>                     packument (tarball URL on the host asked)
         GET /<package>/-/<name>-<v>.tgz    the tarball
Anything else falls through to the ordinary web routes (GET / says hello).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import html
import io
import json
import re
import ssl
import tarfile
import zipfile
from dataclasses import dataclass

import h11
from tests.lab.records import JsonlWriter
from tests.lab.world_http import Reply, _next_event, _read_body, _send, route, served_host

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


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    host: str
    headers: dict[str, str]


class PackageServer:
    """Serves a package site over HTTP/1.1 (keep-alive), logging each request."""

    def __init__(self, log: JsonlWriter, scheme: str, site: PypiSite | NpmSite) -> None:
        self._log = log
        self._scheme = scheme
        self._site = site

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while await self._one_request(conn, reader, writer):
                conn.start_next_cycle()
        except (h11.ProtocolError, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # a client that misbehaves or leaves just loses its connection
        finally:
            writer.close()

    async def _one_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        event = await _next_event(conn, reader)
        if not isinstance(event, h11.Request):
            return False
        request = self._request(event, writer)
        body = await _read_body(conn, reader)
        if isinstance(self._site, NpmSite):
            reply = self._site.route(request.method, request.path, request.host)
        else:
            reply = self._site.route(request.method, request.path)
        if reply is None:
            reply = route(request.method, request.path, request.host, request.headers, body or b"")
        await _send(conn, writer, reply)
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def _request(self, event: h11.Request, writer: asyncio.StreamWriter) -> _Request:
        headers: dict[str, str] = {}
        for name, value in event.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        sni = getattr(writer.get_extra_info("ssl_object"), "lab_sni", None)
        local = writer.get_extra_info("sockname")
        peer = writer.get_extra_info("peername")
        request = _Request(
            event.method.decode("ascii"),
            event.target.decode("latin-1"),
            served_host(headers.get("host"), sni, local[0]),
            headers,
        )
        self._log.write(
            {
                "scheme": self._scheme,
                "host": request.host,
                "sni": sni,
                "method": request.method,
                "path": request.path,
                "headers": headers,
                "src": peer[0],
                "sport": peer[1],
                "dst": local[0],
                "dport": local[1],
            }
        )
        return request


def site_for(kind: str) -> PypiSite | NpmSite:
    """The site a package service kind ("pypi", "npm") serves."""
    return {"pypi": PypiSite, "npm": NpmSite}[kind]()
