"""Package managers' configuration, parsed: pip and uv (INI, TOML, environment), npm, yarn
and pnpm (.npmrc, .yarnrc.yml, .yarnrc), cargo (TOML, environment) and go (GOPROXY,
GOSUMDB, go env), and the registry URLs they yield, turned into policy rules.

Everything here is pure: it takes text or data and returns values. Reading the files,
the environment and the tools' answers is `discover.py`'s job.
"""

from __future__ import annotations

import configparser
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from corridor.policy.hosts import InvalidHost, normalize_host, parse_ip_literal
from corridor.policy.model import Rule

DEFAULT_URL_PORTS = {"https": 443, "http": 80}
# Cargo writes the kind of a source before its URL ("sparse+https://...").
_URL_KIND_PREFIXES = ("sparse+", "registry+", "git+")
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})

# ------------------------------------------------------------------------------ results


@dataclass(frozen=True, slots=True)
class Source:
    """One URL a package manager fetches from, and where that was found.

    `url` may carry credentials (user:token@): it is never shown, only `where` is.
    """

    url: str
    where: str


@dataclass(frozen=True, slots=True)
class Discovery:
    """What one ecosystem's tools use: the URLs found, and notes for `policy show`."""

    ecosystem: str
    sources: tuple[Source, ...] = ()
    notes: tuple[str, ...] = ()


class NoEndpoint(ValueError):
    """A configured location that needs no rule; `local` when it is on this machine."""

    def __init__(self, reason: str, *, local: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.local = local


# ------------------------------------------------------------------- URLs -> rules (pure)


def url_endpoint(url: str) -> tuple[str, int]:
    """The host (or address) and port a package URL is fetched from.

    Raises `NoEndpoint` for a local path or `file://` URL (local=True) and for anything
    that is not an http(s) URL with a host.
    """
    text = url.strip()
    for prefix in _URL_KIND_PREFIXES:
        text = text.removeprefix(prefix)
    if "://" not in text:
        raise NoEndpoint("a local path, no network", local=True)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        raise NoEndpoint("a file:// URL, no network", local=True)
    if scheme not in DEFAULT_URL_PORTS:
        raise NoEndpoint(f"{scheme}:// URLs are not fetched over HTTP")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise NoEndpoint("not a valid URL (bad port)") from None
    if not host:
        raise NoEndpoint("no host in the URL")
    return host, port if port is not None else DEFAULT_URL_PORTS[scheme]


def rules_from_sources(template: str, sources: Iterable[Source]) -> tuple[list[Rule], list[str]]:
    """One allow rule per (host, port) the sources reach, origins merged; plus notes.

    Each rule's origin reads "TEMPLATE: WHERE" (several joined by "; "). Local sources
    give a note instead of a rule; unusable ones a note saying why they were skipped.
    """
    found: dict[tuple[str, int], list[str]] = {}
    notes: list[str] = []
    for source in sources:
        try:
            host, port = url_endpoint(source.url)
            target = _rule_target(host)
        except NoEndpoint as e:
            verdict = "no rule" if e.local else "skipped"
            notes.append(f"{template}: {source.where}: {e.reason}: {verdict}")
            continue
        origins = found.setdefault((target, port), [])
        if source.where not in origins:
            origins.append(source.where)
    rules = [
        _rule(target, port, f"{template}: " + "; ".join(wheres))
        for (target, port), wheres in found.items()
    ]
    return rules, notes


def is_networked(url: str) -> bool:
    try:
        url_endpoint(url)
    except NoEndpoint:
        return False
    return True


def _rule_target(host: str) -> str:
    """A normalised name, or an address as "ADDR/LEN"; raises NoEndpoint if neither."""
    address = parse_ip_literal(host)
    if address is not None:
        return str(ipaddress.ip_network(address))
    try:
        return normalize_host(host)
    except InvalidHost as e:
        raise NoEndpoint(f"the host is not a valid name ({e.reason})") from None


def _rule(target: str, port: int, origin: str) -> Rule:
    # Registry hosts are inspected so that every package download is recorded (audit
    # package events need the URL, which TLS hides otherwise).
    if "/" in target:
        return Rule(cidr=ipaddress.ip_network(target), ports=[port], origin=origin)
    return Rule(host=target, ports=[port], inspect=True, origin=origin)


def _split_words(value: str) -> list[str]:
    return value.split()


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().lower() in _TRUE_WORDS


# ----------------------------------------------------------------------- pip (pure)

PIP_URL_KEYS = ("index-url", "extra-index-url", "find-links")
# Sections pip reads for the commands that fetch packages; "global" applies to all.
PIP_COMMAND_SECTIONS = ("install", "download", "wheel", "index", "lock")


def parse_pip_config(text: str) -> dict[tuple[str, str], str]:
    """A pip config file as {(section, key): value}, keys normalised as pip does.

    Raises ValueError when the file is not INI.
    """
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(text)
    except configparser.Error as e:
        raise ValueError(str(e).splitlines()[0]) from None
    out: dict[tuple[str, str], str] = {}
    for section in parser.sections():
        for key, value in parser.items(section):
            out[(section.lower(), _pip_key(key))] = value
    return out


def _pip_key(key: str) -> str:
    # pip's own rule: case and "_" vs "-" do not matter, a leading "--" is dropped.
    return key.lower().replace("_", "-").removeprefix("--")


@dataclass(frozen=True, slots=True)
class PipSettings:
    """The URLs pip is configured with and whether some command still uses pip's default."""

    sources: tuple[Source, ...]
    uses_default: bool


def pip_settings(
    files: Sequence[tuple[str, Mapping[tuple[str, str], str]]], env: Mapping[str, str]
) -> PipSettings:
    """Resolve pip's URL settings like pip: later files win, a command's section beats
    [global], PIP_* variables beat files. `files` holds (path, parsed file) in load order.
    """
    settled: dict[tuple[str, str], tuple[str, str]] = {}  # (section, key) -> (value, where)
    for path, values in files:
        for (section, key), value in values.items():
            if key in (*PIP_URL_KEYS, "no-index"):
                settled[(section, key)] = (value, f"pip config {section}.{key} ({path})")
    sources: list[Source] = []
    uses_default = False
    for command in PIP_COMMAND_SECTIONS:

        def setting(key: str, command: str = command) -> tuple[str, str] | None:
            var = "PIP_" + key.upper().replace("-", "_")
            if var in env:
                return env[var], f"{var} environment variable"
            return settled.get((command, key)) or settled.get(("global", key))

        no_index = setting("no-index")
        indexes_off = no_index is not None and is_true(no_index[0])
        for key in PIP_URL_KEYS:
            found = setting(key)
            if found is None or (indexes_off and key != "find-links"):
                continue
            value, where = found
            urls = [value.strip()] if key == "index-url" else _split_words(value)
            sources += [Source(url, where) for url in urls if url]
        if not indexes_off and setting("index-url") is None:
            uses_default = True
    return PipSettings(tuple(dict.fromkeys(sources)), uses_default)


# ------------------------------------------------------------------------ uv (pure)


def uv_sources(data: Mapping[str, Any], where: str) -> tuple[list[Source], bool]:
    """Index URLs in a uv.toml (or a pyproject's [tool.uv]) table; True if it sets the default.

    Reads `index-url`, `extra-index-url`, `find-links`, `[[index]]` (url, default) and
    the same keys under `[pip]`.
    """
    sources: list[Source] = []
    sets_default = False
    for table, prefix in ((data, ""), (as_table(data.get("pip")), "pip.")):
        url = table.get("index-url")
        if isinstance(url, str):
            sources.append(Source(url, f"uv {where} {prefix}index-url"))
            sets_default = True
        for key in ("extra-index-url", "find-links"):
            values = table.get(key)
            for value in values if isinstance(values, list) else []:
                if isinstance(value, str):
                    sources.append(Source(value, f"uv {where} {prefix}{key}"))
    indexes = data.get("index")
    for i, index in enumerate(indexes if isinstance(indexes, list) else []):
        if isinstance(index, dict) and isinstance(index.get("url"), str):
            sources.append(Source(index["url"], f"uv {where} index[{i}]"))
            sets_default = sets_default or index.get("default") is True
    return sources, sets_default


def uv_env_sources(env: Mapping[str, str]) -> tuple[list[Source], bool]:
    """Index URLs from UV_DEFAULT_INDEX, UV_INDEX_URL, UV_INDEX, UV_EXTRA_INDEX_URL,
    UV_FIND_LINKS; True if one of them sets the default index."""
    sources: list[Source] = []
    sets_default = False
    for var in ("UV_DEFAULT_INDEX", "UV_INDEX_URL"):
        if env.get(var, "").strip():
            sources.append(Source(env[var].strip(), f"{var} environment variable"))
            sets_default = True
    for var in ("UV_INDEX", "UV_EXTRA_INDEX_URL"):
        for word in _split_words(env.get(var, "")):
            # UV_INDEX entries may be named: "name=https://..."
            url = word.split("=", 1)[1] if "=" in word.split("://", 1)[0] else word
            sources.append(Source(url, f"{var} environment variable"))
    for url in env.get("UV_FIND_LINKS", "").split(","):
        if url.strip():
            sources.append(Source(url.strip(), "UV_FIND_LINKS environment variable"))
    return sources, sets_default


def as_table(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------- npm, yarn, pnpm (pure)

_NPM_REGISTRY_KEY = re.compile(r"registry|@[^\s:/]+:registry")
_ENV_REFERENCE = re.compile(r"\$\{([^}?]+)(\?)?\}")


def parse_npmrc(text: str, env: Mapping[str, str]) -> dict[str, str]:
    """An .npmrc (npm's `ini` format) as {key: value}, `${VAR}` references expanded.

    Keys inside a `[section]` are prefixed "section." as npm does; quotes are removed.
    """
    out: dict[str, str] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip() + "."
            continue
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        out[section + _unquote(key.strip())] = _expand(value, env)
    return out


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def _expand(value: str, env: Mapping[str, str]) -> str:
    return _ENV_REFERENCE.sub(lambda m: env.get(m.group(1), ""), value)


def npm_registries(values: Mapping[str, object]) -> dict[str, str]:
    """The registry settings among npm config values: "registry" and "@scope:registry"."""
    return {
        key: value
        for key, value in values.items()
        if isinstance(value, str) and _NPM_REGISTRY_KEY.fullmatch(key)
    }


def npm_env_registries(env: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Registry settings from npm_config_* variables (any case): {key: (url, var)}."""
    out: dict[str, tuple[str, str]] = {}
    for var, value in env.items():
        if var.lower().startswith("npm_config_"):
            key = var[len("npm_config_") :]
            if _NPM_REGISTRY_KEY.fullmatch(key.lower()):
                out[key.lower()] = (value, var)
    return out


def yarnrc_yml_registries(text: str) -> dict[str, str]:
    """Registries in a Yarn (berry) .yarnrc.yml: npmRegistryServer and per-scope ones.

    Keys are given npm's names ("registry", "@scope:registry"). Raises ValueError for
    text that is not YAML.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(str(e).splitlines()[0]) from None
    data = as_table(data)
    out: dict[str, str] = {}
    if isinstance(data.get("npmRegistryServer"), str):
        out["registry"] = data["npmRegistryServer"]
    for scope, settings in as_table(data.get("npmScopes")).items():
        server = as_table(settings).get("npmRegistryServer")
        if isinstance(server, str):
            out[f"@{str(scope).lstrip('@')}:registry"] = server
    return out


def yarnrc_classic_registries(text: str) -> dict[str, str]:
    """Registries in a Yarn 1 .yarnrc: lines `registry "URL"` or `"@scope:registry" "URL"`."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        parts = raw.strip().split(None, 1)
        if len(parts) == 2 and not parts[0].startswith("#"):
            key = _unquote(parts[0])
            if _NPM_REGISTRY_KEY.fullmatch(key):
                out[key] = _unquote(parts[1].strip())
    return out


# ---------------------------------------------------------------------- cargo (pure)


def cargo_sources(data: Mapping[str, Any], where: str) -> tuple[list[Source], bool]:
    """Registry URLs in a cargo config; True if it replaces cargo's default registry.

    Reads `[source.NAME]` (registry, git), `[registries.NAME] index` and the old
    `[registry] index`.
    """
    sources: list[Source] = []
    for name, table in as_table(data.get("source")).items():
        for key in ("registry", "git"):
            if isinstance(as_table(table).get(key), str):
                sources.append(Source(table[key], f"cargo {where} source.{name}.{key}"))
    for name, table in as_table(data.get("registries")).items():
        if isinstance(as_table(table).get("index"), str):
            sources.append(Source(table["index"], f"cargo {where} registries.{name}.index"))
    legacy = as_table(data.get("registry")).get("index")
    if isinstance(legacy, str):
        sources.append(Source(legacy, f"cargo {where} registry.index"))
    replaced = "replace-with" in as_table(as_table(data.get("source")).get("crates-io"))
    return sources, replaced


def cargo_env_sources(env: Mapping[str, str]) -> list[Source]:
    """Registry index URLs from CARGO_REGISTRIES_<NAME>_INDEX variables."""
    pattern = re.compile(r"CARGO_REGISTRIES_(.+)_INDEX")
    return [
        Source(value, f"{var} environment variable")
        for var, value in sorted(env.items())
        if pattern.fullmatch(var)
    ]


# ------------------------------------------------------------------------- go (pure)


def goproxy_urls(value: str) -> tuple[list[str], list[str]]:
    """GOPROXY's proxy URLs and its keywords ("direct", "off"), in order.

    Entries are separated by "," (fall back on 404/410) or "|" (fall back on any error).
    """
    urls: list[str] = []
    keywords: list[str] = []
    for entry in re.split(r"[,|]", value):
        entry = entry.strip()
        if entry in ("direct", "off"):
            keywords.append(entry)
        elif entry:
            urls.append(entry)
    return urls, keywords


def gosumdb_url(value: str) -> str | None:
    """The URL of a GOSUMDB setting ("NAME[+KEY] [URL]"), or None when it is off or empty."""
    fields = value.split()
    if not fields or fields[0] == "off":
        return None
    if len(fields) > 1:
        return fields[1]
    return "https://" + fields[0].split("+", 1)[0]


def parse_goenv(text: str) -> dict[str, str]:
    """The `go env -w` file: NAME=VALUE lines."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        name, sep, value = raw.strip().partition("=")
        if sep and name and not name.startswith("#"):
            out[name.strip()] = value.strip()
    return out
