"""Package downloads recognised from request URLs, on the shapes real clients request.

Registry mirrors use `.test` hosts here; GitHub, crates and the Go module proxy appear
under their own public names because their path shapes are tied to them.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corridor.audit.events import Kind
from corridor.audit.packages import Package, package_event, parse

P = Package

CASES = [
    # -- Python: wheels anywhere, sdists under a packages/ (or devpi +f/) directory
    ("wheel", "https://files.py-mirror.test/packages/3f/de/2b1f0b05a16a72f7e5a1f45e0e1a0c5b5e1"
     "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c/requests-2.32.3-py3-none-any.whl",
     P("pypi", "requests", "2.32.3", "requests-2.32.3-py3-none-any.whl")),
    ("wheel-underscore-name", "https://py-mirror.test/packages/26/9f/ad63fc0248c5379346306f8668cda"
     "6e2e2e9c95e01216d2b8ffd9ff037d0/typing_extensions-4.12.2-py3-none-any.whl",
     P("pypi", "typing-extensions", "4.12.2", "typing_extensions-4.12.2-py3-none-any.whl")),
    ("wheel-platform", "https://py-mirror.test/packages/ab/cd/ef/numpy-2.0.1-cp312-cp312-"
     "manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
     P("pypi", "numpy", "2.0.1",
       "numpy-2.0.1-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")),
    ("wheel-build-tag", "https://py-mirror.test/simple-files/pkg-1.0-1-py3-none-any.whl",
     P("pypi", "pkg", "1.0", "pkg-1.0-1-py3-none-any.whl")),
    ("sdist-source-path", "https://py-mirror.test/packages/source/p/python-dateutil/"
     "python-dateutil-2.9.0.post0.tar.gz",
     P("pypi", "python-dateutil", "2.9.0.post0", "python-dateutil-2.9.0.post0.tar.gz")),
    ("sdist-hash-path", "https://py-mirror.test/packages/63/70/2bf7780ad2d390a8d301ad0b550f1581e"
     "adbd9a20f896afe06353c2a2913/requests-2.32.3.tar.gz",
     P("pypi", "requests", "2.32.3", "requests-2.32.3.tar.gz")),
    ("sdist-zip", "https://py-mirror.test/packages/aa/bb/cc/Django-1.11.29.zip",
     P("pypi", "django", "1.11.29", "Django-1.11.29.zip")),
    ("sdist-devpi", "https://devpi.test/root/pypi/+f/a1b/2c3d4e5f6a7b8/flask-3.0.3.tar.gz",
     P("pypi", "flask", "3.0.3", "flask-3.0.3.tar.gz")),
    ("python-index-page", "https://py-mirror.test/simple/requests/", None),
    ("tarball-elsewhere", "https://files.test/downloads/requests-2.32.3.tar.gz", None),
    # -- npm tarballs, plain and scoped (as npm requests them, and with %2f)
    ("npm", "https://npm-mirror.test/lodash/-/lodash-4.17.21.tgz",
     P("npm", "lodash", "4.17.21", "lodash-4.17.21.tgz")),
    ("npm-scoped", "https://npm-mirror.test/@types/node/-/node-20.11.5.tgz",
     P("npm", "@types/node", "20.11.5", "node-20.11.5.tgz")),
    ("npm-scoped-escaped", "https://npm-mirror.test/@babel%2fcore/-/core-7.24.9.tgz",
     P("npm", "@babel/core", "7.24.9", "core-7.24.9.tgz")),
    ("npm-prerelease", "https://npm-mirror.test/typescript/-/typescript-5.6.0-beta.tgz",
     P("npm", "typescript", "5.6.0-beta", "typescript-5.6.0-beta.tgz")),
    ("npm-behind-a-prefix", "https://artifacts.test/api/npm/npm-remote/left-pad/-/left-pad-1.3.0.tgz",
     P("npm", "left-pad", "1.3.0", "left-pad-1.3.0.tgz")),
    ("npm-packument", "https://npm-mirror.test/lodash", None),
    ("npm-mismatched-file", "https://npm-mirror.test/lodash/-/underscore-1.0.0.tgz", None),
    # -- crates
    ("crate-static", "https://crates-static.test/crates/serde/serde-1.0.203.crate",
     P("cargo", "serde", "1.0.203", "serde-1.0.203.crate")),
    ("crate-dashed-name", "https://crates-static.test/crates/serde-json/serde-json-1.0.120.crate",
     P("cargo", "serde-json", "1.0.120", "serde-json-1.0.120.crate")),
    ("crate-api", "https://crates-api.test/api/v1/crates/tokio/1.38.0/download",
     P("cargo", "tokio", "1.38.0")),
    ("crate-sparse-index", "https://crates-index.test/se/rd/serde", None),
    # -- Go module proxy
    ("go-zip", "https://goproxy.test/golang.org/x/text/@v/v0.14.0.zip",
     P("golang", "golang.org/x/text", "v0.14.0", "v0.14.0.zip")),
    ("go-mod", "https://goproxy.test/github.com/stretchr/testify/@v/v1.9.0.mod",
     P("golang", "github.com/stretchr/testify", "v1.9.0", "v1.9.0.mod")),
    ("go-info-case-escaped", "https://goproxy.test/github.com/!azure/go-autorest/@v/"
     "v14.2.0+incompatible.info",
     P("golang", "github.com/Azure/go-autorest", "v14.2.0+incompatible",
       "v14.2.0+incompatible.info")),
    ("go-pseudo-version", "https://goproxy.test/github.com/!burnt!sushi/toml/@v/"
     "v0.0.0-20230101000000-abcdef123456.zip",
     P("golang", "github.com/BurntSushi/toml", "v0.0.0-20230101000000-abcdef123456",
       "v0.0.0-20230101000000-abcdef123456.zip")),
    ("go-list", "https://goproxy.test/golang.org/x/text/@v/list", None),
    ("go-latest", "https://goproxy.test/golang.org/x/text/@latest", None),
    ("go-unescaped-capital", "https://goproxy.test/github.com/Azure/x/@v/v1.0.0.zip", None),
    # -- Debian pool
    ("deb", "http://deb-mirror.test/debian/pool/main/c/curl/curl_8.5.0-2_amd64.deb",
     P("deb", "curl", "8.5.0-2", "curl_8.5.0-2_amd64.deb")),
    ("deb-lib-prefix", "http://deb-mirror.test/ubuntu/pool/main/o/openssl/"
     "libssl3t64_3.0.13-0ubuntu3.4_amd64.deb",
     P("deb", "libssl3t64", "3.0.13-0ubuntu3.4", "libssl3t64_3.0.13-0ubuntu3.4_amd64.deb")),
    ("deb-epoch", "http://deb-mirror.test/debian/pool/main/s/systemd/"
     "libsystemd0_1%3a255.4-1_amd64.deb",
     P("deb", "libsystemd0", "1:255.4-1", "libsystemd0_1:255.4-1_amd64.deb")),
    ("udeb", "http://deb-mirror.test/debian/pool/main/b/busybox/busybox-udeb_1.36.1-9_arm64.udeb",
     P("deb", "busybox-udeb", "1.36.1-9", "busybox-udeb_1.36.1-9_arm64.udeb")),
    ("deb-index", "http://deb-mirror.test/debian/dists/bookworm/main/binary-amd64/Packages.xz",
     None),
    # -- GitHub release assets and archives
    ("github-release", "https://github.com/cli/cli/releases/download/v2.45.0/"
     "gh_2.45.0_linux_amd64.tar.gz",
     P("github", "cli/cli", "v2.45.0", "gh_2.45.0_linux_amd64.tar.gz")),
    ("github-archive-tag", "https://github.com/psf/requests/archive/refs/tags/v2.32.3.tar.gz",
     P("github", "psf/requests", "v2.32.3", "v2.32.3.tar.gz")),
    ("github-archive-short", "https://github.com/psf/requests/archive/v2.32.3.zip",
     P("github", "psf/requests", "v2.32.3", "v2.32.3.zip")),
    ("codeload", "https://codeload.github.com/psf/requests/tar.gz/refs/tags/v2.32.3",
     P("github", "psf/requests", "v2.32.3")),
    ("github-page", "https://github.com/cli/cli/releases/tag/v2.45.0", None),
    ("github-shape-elsewhere", "https://git.test/cli/cli/releases/download/v1/x.tar.gz", None),
    # -- git smart HTTP fetches (clone, fetch, pull)
    ("git-refs", "https://github.com/psf/requests.git/info/refs?service=git-upload-pack",
     P("git", "github.com/psf/requests", None)),
    ("git-refs-no-suffix", "https://git.test/team/tool/info/refs?service=git-upload-pack",
     P("git", "git.test/team/tool", None)),
    ("git-upload-pack", "https://github.com/psf/requests.git/git-upload-pack",
     P("git", "github.com/psf/requests", None)),
    ("git-push-is-not-a-fetch", "https://github.com/psf/requests.git/info/refs"
     "?service=git-receive-pack", None),
    # -- not downloads, not URLs
    ("root", "https://py-mirror.test/", None),
    ("empty", "", None),
    ("bad-port", "https://npm-mirror.test:99999999/x/-/x-1.tgz", None),
    ("unbalanced-bracket", "http://[::1/x.whl", None),
]  # fmt: skip


@pytest.mark.parametrize(("url", "expected"), [pytest.param(c[1], c[2], id=c[0]) for c in CASES])
def test_parse(url: str, expected: Package | None) -> None:
    assert parse(url) == expected


@pytest.mark.parametrize(
    ("package", "purl"),
    [
        (P("npm", "@types/node", "20.11.5"), "pkg:npm/%40types/node@20.11.5"),
        (P("pypi", "requests", "2.32.3"), "pkg:pypi/requests@2.32.3"),
        (P("git", "github.com/psf/requests", None), "pkg:git/github.com/psf/requests"),
    ],
)
def test_purl(package: Package, purl: str) -> None:
    assert package.purl == purl


def test_package_event_carries_what_the_report_needs() -> None:
    url = "https://npm-mirror.test/lodash/-/lodash-4.17.21.tgz"
    package = parse(url)
    assert package is not None
    event = package_event("s", 1.0, url, package, host="npm-mirror.test", port=443, conn_id=3)
    assert event.kind is Kind.PACKAGE and (event.host, event.port, event.conn_id) == (
        "npm-mirror.test", 443, 3,
    )  # fmt: skip
    assert event.data == {
        "ecosystem": "npm", "name": "lodash", "version": "4.17.21",
        "file": "lodash-4.17.21.tgz", "url": url,
    }  # fmt: skip


@given(st.text(max_size=300))
def test_parse_never_raises_on_any_text(text: str) -> None:
    found = parse(text)
    assert found is None or found.name


@given(st.lists(st.text(max_size=20), max_size=8), st.text(max_size=40))
def test_parse_never_raises_on_url_shapes(segments: list[str], query: str) -> None:
    parse("https://x.test/" + "/".join(segments) + "?" + query)
