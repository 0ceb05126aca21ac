"""Package registries, discovered at run time from the package managers' own configuration.

No registry host is written in corridor: the `python-deps`, `node-deps`, `rust-deps` and
`go-deps` templates ask the tools on this machine what they would use (their config files,
their environment, and where nothing is configured their own defaults, as they report
them). A company mirror is therefore followed automatically.

Layout: the parsers (INI, .npmrc, YAML and TOML config, GOPROXY lists, URLs) are pure and
take text or data (policy/registry_config.py); here, `HostContext` is the one place that
reads files, the environment and PATH; `_ask` is the one place that runs a tool.
Discovery never fails a run: a tool that is missing, slow or broken contributes nothing,
and a note says so.

`ask_kept` keeps the answers of pip's probe and npm between runs, in corridor's state
directory, while nothing they depend on changed (policy/tool_cache.py); the files they
name are still read on every run.

Tools are run outside the sandbox, so they are run where no project can steer them: in an
empty temporary directory (a repository's own .npmrc, .yarnrc.yml or package.json
`packageManager` cannot make them execute or download anything), `python -I`, corepack
without network, `GOTOOLCHAIN=local`. Project configuration is read by the parsers here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corridor.policy.registry_config import (
    Discovery,
    Source,
    as_table,
    cargo_env_sources,
    cargo_sources,
    goproxy_urls,
    gosumdb_url,
    is_networked,
    is_true,
    npm_env_registries,
    npm_registries,
    parse_goenv,
    parse_npmrc,
    parse_pip_config,
    pip_settings,
    uv_env_sources,
    uv_sources,
    yarnrc_classic_registries,
    yarnrc_yml_registries,
)
from corridor.policy.tool_cache import (
    ANSWER_CACHE_FILE,
    AnswerCache,
    Dep,
    env_deps,
    file_deps,
    program_deps,
    question_key,
)

# A tool answers in 0.1-0.3 s; one that takes longer is hung or prompting, and a policy
# must not wait on it: it is treated as absent (and a note says so).
DISCOVERY_TIMEOUT_S = 2.0
# Configuration files are small; a bigger one is not configuration and is not parsed.
MAX_CONFIG_BYTES = 256 * 1024
# Where tools are asked: only root may write there, and it has no parent to search.
NEUTRAL_DIR = "/"
# How far up from the working directory project configuration is looked for.
MAX_PROJECT_DEPTH = 64


# ----------------------------------------------------------------- the edge: HostContext


def pip_config_files(
    reported: Mapping[str, Sequence[str]], env: Mapping[str, str]
) -> list[tuple[str, str]]:
    """The files pip loads, lowest precedence first, as (variant, path).

    `reported` is pip's own `get_configuration_files()` (global, user, site). Like pip:
    PIP_CONFIG_FILE set to the null device loads nothing; an existing PIP_CONFIG_FILE
    replaces the user files and is loaded last.
    """
    env_file = env.get("PIP_CONFIG_FILE")
    if env_file == os.devnull:
        return []
    out = [("global", p) for p in reported.get("global", ())]
    if not (env_file and os.path.exists(env_file)):
        out += [("user", p) for p in reported.get("user", ())]
    out += [("site", p) for p in reported.get("site", ())]
    if env_file:
        out.append(("env", env_file))
    return out


@dataclass(frozen=True)
class Answer:
    """What a tool printed; `problem` says why there is no usable output."""

    stdout: str = ""
    problem: str | None = None


@dataclass(frozen=True)
class HostContext:
    """The machine as the tools see it: the environment corridor was started with, the
    working directory, files and PATH. Hashable, so discoveries can be cached per context.
    """

    env_items: tuple[tuple[str, str], ...]
    cwd: str
    # corridor's state directory, where tool answers are kept between runs (None: asked
    # every time). Not part of equality: a kept answer gives the same discovery.
    state_dir: str | None = field(default=None, compare=False)
    _env: dict[str, str] = field(init=False, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_env", dict(self.env_items))

    @classmethod
    def current(cls, state_dir: Path | str | None = None) -> HostContext:
        """This process's environment and working directory; tool answers are kept under
        `state_dir` when given."""
        return cls.of(os.environ, Path.cwd(), state_dir)

    @classmethod
    def of(
        cls, env: Mapping[str, str], cwd: Path | str, state_dir: Path | str | None = None
    ) -> HostContext:
        return cls(
            tuple(sorted(env.items())), str(cwd), None if state_dir is None else str(state_dir)
        )

    @property
    def env(self) -> Mapping[str, str]:
        return self._env

    @property
    def home(self) -> Path:
        return Path(self._env.get("HOME") or os.path.expanduser("~"))

    def config_home(self) -> Path:
        return Path(self._env.get("XDG_CONFIG_HOME") or self.home / ".config")

    def which(self, name: str) -> str | None:
        """The tool's path on this context's PATH, or None."""
        return shutil.which(name, path=self._env.get("PATH", os.defpath))

    def read(self, path: Path | str) -> tuple[str | None, str | None]:
        """(text, None), (None, None) when there is no such file, or (None, problem)."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_CONFIG_BYTES + 1)
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except OSError as e:
            return None, f"cannot read {path}: {e.strerror or e}"
        if len(data) > MAX_CONFIG_BYTES:
            return None, f"{path} is larger than {MAX_CONFIG_BYTES} bytes: not read"
        return data.decode("utf-8", errors="replace"), None

    def upward(self, *names: str) -> Iterator[Path]:
        """Existing files named `names` in the working directory and each parent."""
        here = Path(self.cwd)
        for directory in [here, *here.parents][:MAX_PROJECT_DEPTH]:
            for name in names:
                candidate = directory / name
                if candidate.is_file():
                    yield candidate

    def ask(self, argv: Sequence[str], extra_env: Mapping[str, str] | None = None) -> Answer:
        """Run a tool in the root directory, with a timeout: no project can steer it.

        Not a new directory under the temporary directory: tools look for project files
        (npm's package.json and .npmrc, pyenv's .python-version) from their working
        directory upwards, and anyone on the machine may write /tmp/.npmrc.
        """
        env = {**self._env, **(extra_env or {})}
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=NEUTRAL_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # so a hung tool and its children end together
            )
        except OSError as e:
            return Answer(problem=f"could not be run ({e.strerror or e})")
        try:
            stdout, stderr = proc.communicate(timeout=DISCOVERY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return Answer(problem=f"did not answer within {DISCOVERY_TIMEOUT_S:g} s")
        if proc.returncode != 0:
            last = (stderr.strip().splitlines() or ["no message"])[-1]
            return Answer(problem=f"failed (exit {proc.returncode}: {last[:200]})")
        return Answer(stdout)

    def ask_kept(self, argv: Sequence[str], extra_env: Mapping[str, str], tool: KeptTool) -> Answer:
        """`ask`, or the answer kept from an earlier run while nothing it depends on changed.

        Only the part of the answer discovery uses is kept (`tool.keep`), and it is what
        is returned either way, so a kept answer gives exactly the same discovery.
        """
        cache = self._answer_cache()
        if cache is None:
            answer = self.ask(argv, extra_env)
            return answer if answer.problem is not None else Answer(tool.keep(answer.stdout))
        key = question_key(argv, extra_env, {k: v for k, v in self._env.items() if tool.steers(k)})
        if (kept := cache.get(key, self._env)) is not None:
            return Answer(kept)
        before = program_deps(argv[0], self._env)  # taken before asking: a change meanwhile
        answer = self.ask(argv, extra_env)  # makes the kept answer stale at once
        if answer.problem is not None:
            return answer  # failures are not kept: the next run asks again
        kept = tool.keep(answer.stdout)
        try:
            deps = tool.depends(self, argv[0], answer.stdout)
        except (OSError, ValueError):  # an odd path in an answer: just not kept
            deps = None
        if deps is not None:
            cache.put(key, kept, [*before, *deps])
        return Answer(kept)

    def _answer_cache(self) -> AnswerCache | None:
        if self.state_dir is None:
            return None
        try:
            state, project = Path(self.state_dir).resolve(), Path(self.cwd).resolve()
        except (OSError, RuntimeError):  # a symlink loop: no cache rather than a traceback
            return None
        # A state directory inside the project (or around it) could be written by the
        # project, or by an agent working in it: what it says would widen the policy. Not
        # used there (`corridor run` refuses such a state directory anyway).
        if state.is_relative_to(project) or project.is_relative_to(state):
            return None
        return AnswerCache(state / ANSWER_CACHE_FILE)


@dataclass(frozen=True)
class KeptTool:
    """How a tool's answers are kept: which environment variables steer it (part of the
    key), what part of the answer is kept, and what else the answer depends on (None:
    something that cannot be enumerated, so it is not kept)."""

    steers: Callable[[str], bool]
    keep: Callable[[str], str]
    depends: Callable[[HostContext, str, str], list[Dep] | None]


def _steered_by(names: Iterable[str], prefixes: Iterable[str]) -> Callable[[str], bool]:
    """A `steers` predicate: exact names, or (case-insensitive) prefixes."""
    exact, lowered = frozenset(names), tuple(p.lower() for p in prefixes)
    return lambda var: var in exact or var.lower().startswith(lowered)


# Variables every tool here may read to find its files: where home, config and temporary
# directories are, and which programs PATH finds.
_COMMON_STEERING = ("HOME", "PATH", "TMPDIR", "USER", "LOGNAME")


class _Collector:
    """Sources and notes gathered by one ecosystem's discovery."""

    def __init__(self, ecosystem: str):
        self.ecosystem = ecosystem
        self.sources: list[Source] = []
        self.notes: list[str] = []

    def done(self) -> Discovery:
        return Discovery(self.ecosystem, tuple(dict.fromkeys(self.sources)), tuple(self.notes))


# --------------------------------------------------------------------------- python

# Run by the python in use (isolated: no PYTHON* variables, no current directory on the
# path): pip's own default index and file host, and the config files pip reads. Also what
# that answer depends on, so it can be kept between runs: the interpreter, the pyvenv.cfg
# that would make it a virtualenv, every directory on sys.path (a package installed or
# removed there changes its mtime), every pip module loaded, and the variables a pyenv
# shim exports (it chose the interpreter).
_PIP_PROBE = """\
import json, os, sys
out = {"executable": sys.executable, "prefix": sys.prefix}
try:
    import pip
    out["pip"] = pip.__version__
    from pip._internal.models.index import PyPI
    out["index"] = PyPI.simple_url
    out["files"] = "https://" + PyPI.file_storage_domain + "/"
    from pip._internal.configuration import get_configuration_files
    out["config_files"] = {str(k): list(v) for k, v in get_configuration_files().items()}
except Exception as e:
    out["error"] = type(e).__name__ + ": " + str(e)
here = os.path.dirname(sys.executable)
deps = [os.path.realpath(sys.executable), os.path.join(here, "pyvenv.cfg")]
deps += [os.path.join(os.path.dirname(here), "pyvenv.cfg")] + [p for p in sys.path if p]
deps += sorted(
    m.__file__ for n, m in list(sys.modules.items())
    if n.split(".")[0] == "pip" and isinstance(getattr(m, "__file__", None), str)
)
out["depends_on"] = deps
out["launcher"] = {k: v for k, v in os.environ.items() if k.startswith("PYENV_")}
print(json.dumps(out))
"""
# The probe's own bookkeeping, not part of the answer discovery uses.
_PIP_PROBE_DEPS = ("depends_on", "launcher")


def _python(ctx: HostContext) -> Discovery:
    out = _Collector("python")
    python = ctx.which("python3") or ctx.which("python")
    probe: dict[str, Any] = {}
    if python is None:
        out.notes.append("pip: no python3 on PATH: nothing discovered from pip")
    else:
        answer = ctx.ask_kept([python, "-I", "-c", _PIP_PROBE], {}, _PIP_TOOL)
        probe = _json_object(answer.stdout) if answer.problem is None else {}
        if answer.problem is not None or not probe:
            out.notes.append(
                f"pip: {python} {answer.problem or 'gave no answer'}: nothing discovered"
            )
        elif "pip" not in probe:
            out.notes.append(f"pip: not installed for {python}: nothing discovered from it")
            probe = {}
    if probe:
        _pip(ctx, probe, out)
    _uv(ctx, probe, out)
    return out.done()


def _keep_pip_answer(stdout: str) -> str:
    probe = _json_object(stdout)
    if not probe:
        return stdout
    return json.dumps({k: v for k, v in probe.items() if k not in _PIP_PROBE_DEPS})


def _pip_depends(ctx: HostContext, python: str, stdout: str) -> list[Dep] | None:
    """What the probe's answer depends on besides its key, or None when it cannot be said."""
    probe = _json_object(stdout)
    paths, executable = probe.get("depends_on"), probe.get("executable")
    if not (isinstance(paths, list) and all(isinstance(p, str) for p in paths)):
        return None
    if not isinstance(executable, str):
        return None
    deps = file_deps(paths)
    if os.path.realpath(python) != os.path.realpath(executable):
        # `python` is a launcher that chose another interpreter: kept only when it is one
        # whose choice can be enumerated.
        launcher = _pyenv_deps(python, probe.get("launcher"))
        if launcher is None:
            return None
        deps += launcher
    return deps


# A pyenv installation with more files than this in its scripts and hooks is not walked:
# its answers are not kept.
MAX_PYENV_FILES = 2000


def _pyenv_deps(shim: str, launcher: object) -> list[Dep] | None:
    """What a pyenv shim's choice of interpreter depends on (besides PYENV_VERSION, which
    is in the key): its version files, the installed versions, its scripts and hooks."""
    if not isinstance(launcher, dict):
        return None
    root, hooks, where = (launcher.get(k) for k in ("PYENV_ROOT", "PYENV_HOOK_PATH", "PYENV_DIR"))
    if not (isinstance(root, str) and isinstance(where, str) and isinstance(hooks, str)):
        return None
    shims = os.path.realpath(os.path.join(root, "shims"))
    if os.path.dirname(os.path.realpath(shim)) != shims:
        return None
    # pyenv looks for .python-version from its working directory (the probe runs in
    # NEUTRAL_DIR) up to /, then for the global version file.
    version_files = [str(d / ".python-version") for d in [Path(where), *Path(where).parents]]
    version_files += [os.path.join(root, name) for name in ("version", "global", "default")]
    walked = _walk([os.path.realpath(os.path.join(root, "libexec")), *hooks.split(":")])
    if walked is None:
        return None
    dirs = [os.path.join(root, "versions"), os.path.join(root, "plugins")]
    return file_deps([*version_files, *dirs, *walked])


def _walk(tops: Iterable[str]) -> list[str] | None:
    """Every directory and file under `tops` (missing ones as themselves), or None when
    there are more than MAX_PYENV_FILES."""
    out: list[str] = []
    for top in tops:
        if not top:
            continue
        out.append(top)
        for directory, dirs, files in os.walk(top):
            out += [os.path.join(directory, name) for name in (*dirs, *files)]
            if len(out) > MAX_PYENV_FILES:
                return None
    return out


_PIP_TOOL = KeptTool(
    steers=_steered_by(
        [*_COMMON_STEERING, "VIRTUAL_ENV"],
        ["PIP_", "PYTHON", "PYENV", "_PYENV", "VIRTUAL_ENV", "CONDA", "XDG_"],
    ),
    keep=_keep_pip_answer,
    depends=_pip_depends,
)


def _pip(ctx: HostContext, probe: Mapping[str, Any], out: _Collector) -> None:
    reported = probe.get("config_files")
    if not isinstance(reported, dict):
        out.notes.append(
            f"pip: could not ask pip for its config files ({probe.get('error')}): "
            "reading the usual ones"
        )
        reported = _usual_pip_files(ctx, str(probe.get("prefix", "")))
    files: list[tuple[str, Mapping[tuple[str, str], str]]] = []
    for _variant, path in pip_config_files(reported, ctx.env):
        text, problem = ctx.read(path)
        if problem:
            out.notes.append(f"pip: {problem}")
        if text is None:
            continue
        try:
            files.append((path, parse_pip_config(text)))
        except ValueError as e:
            out.notes.append(f"pip: {path} is not a valid config file ({e}): ignored")
    settings = pip_settings(files, ctx.env)
    out.sources += settings.sources
    who = f"pip {probe['pip']}, {probe.get('executable')}"
    if settings.uses_default:
        out.sources += _defaults(probe, f"pip's default index ({who})", out, "pip")
    if any(is_networked(s.url) and s.url != probe.get("index") for s in settings.sources):
        out.notes.append(_MIRROR_NOTE)


def _usual_pip_files(ctx: HostContext, prefix: str) -> dict[str, list[str]]:
    """Where pip reads its config on Linux, for a pip whose internals moved."""
    dirs = [d for d in (ctx.env.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":") if d]
    return {
        "global": [f"{d}/pip/pip.conf" for d in dirs] + ["/etc/pip.conf"],
        "user": [str(ctx.home / ".pip" / "pip.conf"), str(ctx.config_home() / "pip" / "pip.conf")],
        "site": [f"{prefix}/pip.conf"] if prefix else [],
    }


_MIRROR_NOTE = (
    "pip: a configured index may link its files on another host, which cannot be known "
    "ahead: if downloads are refused, add that host to your policy"
)


def _defaults(probe: Mapping[str, Any], where: str, out: _Collector, tool: str) -> list[Source]:
    index, files = probe.get("index"), probe.get("files")
    if not (isinstance(index, str) and isinstance(files, str)):
        out.notes.append(f"{tool}: pip did not report its default index ({probe.get('error')})")
        return []
    return [Source(index, where), Source(files, where.replace("index", "file host", 1))]


def _uv(ctx: HostContext, probe: Mapping[str, Any], out: _Collector) -> None:
    if ctx.which("uv") is None:
        out.notes.append("uv: not installed: nothing discovered from it")
        return
    sources, sets_default = uv_env_sources(ctx.env)
    for label, path in _uv_files(ctx):
        text, problem = ctx.read(path)
        if problem:
            out.notes.append(f"uv: {problem}")
        if text is None:
            continue
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            out.notes.append(f"uv: {path} is not valid TOML ({e}): ignored")
            continue
        if path.name == "pyproject.toml":
            data = as_table(as_table(data.get("tool")).get("uv"))
        found, default = uv_sources(data, f"{label} ({path})")
        sources += found
        sets_default = sets_default or default
    out.sources += sources
    if not sets_default:
        # uv's default index is the same as pip's; pip reports it, uv has no command for it.
        out.sources += _defaults(probe, "uv's default index (as pip reports it)", out, "uv")


def _uv_files(ctx: HostContext) -> list[tuple[str, Path]]:
    """uv's config files, like uv: UV_CONFIG_FILE alone, or system, user, then project.

    The project file is the nearest uv.toml, or pyproject.toml with a [tool.uv] table.
    """
    if is_true(ctx.env.get("UV_NO_CONFIG")):
        return []
    if ctx.env.get("UV_CONFIG_FILE"):
        return [("UV_CONFIG_FILE", Path(ctx.env["UV_CONFIG_FILE"]))]
    dirs = ctx.env.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    system = [Path(d) / "uv" / "uv.toml" for d in dirs.split(":") if d]
    first_system = next((p for p in [*system, Path("/etc/uv/uv.toml")] if p.is_file()), None)
    files = [("system config", first_system)] if first_system else []
    files.append(("user config", ctx.config_home() / "uv" / "uv.toml"))
    for directory in [Path(ctx.cwd), *Path(ctx.cwd).parents][:MAX_PROJECT_DEPTH]:
        if (directory / "uv.toml").is_file():
            files.append(("project config", directory / "uv.toml"))
            break
        text, _ = ctx.read(directory / "pyproject.toml")
        if text is not None and "[tool.uv" in text:
            files.append(("project [tool.uv]", directory / "pyproject.toml"))
            break
    return files


# ----------------------------------------------------------------------------- node


def _node(ctx: HostContext) -> Discovery:
    out = _Collector("node")
    project = _npm_project_dir(Path(ctx.cwd))
    project_values = _read_npmrc(ctx, project / ".npmrc", out, "npm")
    env_registries = npm_env_registries(ctx.env)
    tools = [(name, ctx.which(name)) for name in ("npm", "pnpm", "yarn")]
    asked = _ask_all(ctx, [(name, path) for name, path in tools if path is not None])
    for name, path in tools:
        if path is None:
            out.notes.append(f"{name}: not installed: nothing discovered from it")
        elif name == "yarn":
            _yarn(ctx, asked[name], out)
        else:
            _npm_like(
                ctx, name, asked[name], project / ".npmrc", project_values, env_registries, out
            )
    return out.done()


def _ask_all(ctx: HostContext, tools: list[tuple[str, str]]) -> dict[str, Answer]:
    """Ask each tool for its configuration at once (each takes 0.1-0.2 s to start)."""
    questions = {
        "npm": ["config", "list", "--json"],
        "pnpm": ["config", "get", "registry"],
        "yarn": ["config", "get", "npmRegistryServer"],
    }
    # corepack shims must not download a package manager from the network to answer.
    quiet = {"COREPACK_ENABLE_NETWORK": "0", "COREPACK_ENABLE_DOWNLOAD_PROMPT": "0"}
    if not tools:
        return {}

    def ask(name: str, path: str) -> Answer:
        argv = [path, *questions[name]]
        if name == "npm":
            return ctx.ask_kept(argv, quiet, _NPM_TOOL)
        # pnpm and yarn answers are not kept: their configuration (workspace files,
        # .yarnrc.yml plugins, corepack's choice of version) is not enumerated here.
        return ctx.ask(argv, quiet)

    with ThreadPoolExecutor(max_workers=len(tools)) as pool:
        futures = {name: pool.submit(ask, name, path) for name, path in tools}
        return {name: future.result() for name, future in futures.items()}


# npm answers with its whole configuration; discovery uses the registries and where the
# user and global files are.
_NPM_KEPT_KEYS = ("userconfig", "globalconfig")
# `${NAME}` in an .npmrc is replaced by that environment variable.
_NPMRC_REFERENCE = re.compile(r"\$\{([^}]+)\}")


def _keep_npm_answer(stdout: str) -> str:
    values = _json_object(stdout)
    kept = {k: v for k, v in values.items() if k in _NPM_KEPT_KEYS}
    return json.dumps({**kept, **npm_registries(values)})  # npm's order: sources keep it


def _npm_depends(ctx: HostContext, npm: str, stdout: str) -> list[Dep] | None:
    """The config files npm read to answer (builtin, global, user, and a project file if
    the empty directory it ran in lies inside a project), and the variables they name."""
    values = _json_object(stdout)
    files = [values.get(k) for k in _NPM_KEPT_KEYS]
    if not all(isinstance(f, str) for f in files):
        return None
    package = Path(os.path.realpath(npm)).parent.parent  # npm/bin/npm-cli.js -> npm/
    paths = [*files, str(package / "npmrc"), str(package / "package.json"), str(package)]
    # npm's project is the nearest directory with package.json or node_modules, looked
    # for from the directory it ran in (NEUTRAL_DIR) upward.
    for directory in [Path(NEUTRAL_DIR), *Path(NEUTRAL_DIR).parents]:
        paths += [str(directory / n) for n in ("package.json", "node_modules", ".npmrc")]
    names: list[str] = []
    for path in paths:
        text, _ = ctx.read(path) if not os.path.isdir(path) else (None, None)
        names += _NPMRC_REFERENCE.findall(text or "")
    return file_deps(paths) + env_deps(names, ctx.env)


_NPM_TOOL = KeptTool(
    steers=_steered_by(
        [*_COMMON_STEERING, "PREFIX", "DESTDIR"],
        ["npm_", "NODE_", "COREPACK_", "NVM_", "VOLTA_", "FNM_", "N_PREFIX", "XDG_"],
    ),
    keep=_keep_npm_answer,
    depends=_npm_depends,
)


def _npm_project_dir(cwd: Path) -> Path:
    """npm's project directory: the nearest directory with package.json or node_modules."""
    for directory in [cwd, *cwd.parents][:MAX_PROJECT_DEPTH]:
        if (directory / "package.json").is_file() or (directory / "node_modules").is_dir():
            return directory
    return cwd


def _read_npmrc(ctx: HostContext, path: Path, out: _Collector, tool: str) -> dict[str, str]:
    text, problem = ctx.read(path)
    if problem:
        out.notes.append(f"{tool}: {problem}")
    return npm_registries(parse_npmrc(text, ctx.env)) if text is not None else {}


def _npm_like(
    ctx: HostContext,
    tool: str,
    answer: Answer,
    project_file: Path,
    project: Mapping[str, str],
    env_registries: Mapping[str, tuple[str, str]],
    out: _Collector,
) -> None:
    """npm and pnpm: the tool's own answer (env, user, global, default) + the project file."""
    if answer.problem is not None:
        out.notes.append(f"{tool}: {answer.problem}: nothing discovered from it")
        return
    if tool == "npm":
        values = _json_object(answer.stdout)
        effective = npm_registries(values)
        user = values.get("userconfig")
        global_ = values.get("globalconfig")
        files = [Path(p) for p in (user, global_) if isinstance(p, str)]
    else:
        url = answer.stdout.strip()
        effective = {"registry": url} if "://" in url else {}
        user = _env_any_case(ctx.env, "npm_config_userconfig")
        files = [Path(user) if user else ctx.home / ".npmrc", ctx.config_home() / "pnpm" / "rc"]
    if not effective:
        out.notes.append(f"{tool}: reported no registry: nothing discovered from it")
    layered = {path: _read_npmrc(ctx, path, out, tool) for path in files}
    for key, url in {**effective, **project}.items():
        if key in env_registries:
            out.sources.append(
                Source(
                    env_registries[key][0], f"{tool} {env_registries[key][1]} environment variable"
                )
            )
        elif key in project:
            out.sources.append(Source(project[key], f"{tool} config {key} ({project_file})"))
        else:
            where = next(
                (f"{tool} config {key} ({p})" for p, v in layered.items() if v.get(key) == url),
                None,
            )
            out.sources.append(Source(url, where or f"{tool}'s default {key} ({tool} config)"))


def _env_any_case(env: Mapping[str, str], name: str) -> str | None:
    return next((value for var, value in env.items() if var.lower() == name), None)


def _yarn(ctx: HostContext, answer: Answer, out: _Collector) -> None:
    """Yarn: .yarnrc.yml files (berry) or .yarnrc (classic), YARN_* variables, its default."""
    found: dict[str, Source] = {}
    files = [ctx.home / ".yarnrc.yml", ctx.home / ".yarnrc"]
    files += reversed(list(ctx.upward(".yarnrc.yml", ".yarnrc")))  # nearest wins: last
    for path in files:
        text, problem = ctx.read(path)
        if problem:
            out.notes.append(f"yarn: {problem}")
        if text is None:
            continue
        try:
            parsed = (
                yarnrc_yml_registries(text)
                if path.name.endswith(".yml")
                else yarnrc_classic_registries(text)
            )
        except ValueError as e:
            out.notes.append(f"yarn: {path} is not valid YAML ({e}): ignored")
            continue
        for key, url in parsed.items():
            found[key] = Source(url, f"yarn config {key} ({path})")
    for var in ("YARN_NPM_REGISTRY_SERVER", "YARN_REGISTRY"):
        if ctx.env.get(var):
            found["registry"] = Source(ctx.env[var], f"{var} environment variable")
    if "registry" not in found:
        url = answer.stdout.strip()
        if answer.problem is None and "://" in url:
            found["registry"] = Source(url, "yarn's default registry (yarn config)")
        else:
            out.notes.append(f"yarn: default registry unknown ({answer.problem or 'no URL'})")
    out.sources += found.values()


# ----------------------------------------------------------------------------- rust


def _rust(ctx: HostContext) -> Discovery:
    out = _Collector("rust")
    cargo_home = Path(ctx.env.get("CARGO_HOME") or ctx.home / ".cargo")
    if ctx.which("cargo") is None and not (cargo_home / "bin" / "cargo").is_file():
        out.notes.append("cargo: not installed: nothing discovered from it")
        return out.done()
    files = [cargo_home / "config.toml", cargo_home / "config"]
    files += reversed(list(ctx.upward(".cargo/config.toml", ".cargo/config")))
    replaced = False
    for path in files:
        text, problem = ctx.read(path)
        if problem:
            out.notes.append(f"cargo: {problem}")
        if text is None:
            continue
        try:
            found, replaces = cargo_sources(tomllib.loads(text), f"config ({path})")
        except tomllib.TOMLDecodeError as e:
            out.notes.append(f"cargo: {path} is not valid TOML ({e}): ignored")
            continue
        out.sources += found
        replaced = replaced or replaces
    out.sources += cargo_env_sources(ctx.env)
    if not replaced:
        out.notes.append(
            "cargo: the default registry is not replaced, and cargo has no command that "
            "reports it: add its index and download hosts to your policy if you need them"
        )
    if out.sources:
        out.notes.append(
            "cargo: a registry's download host is named in its index (config.json 'dl'): "
            "if it differs from the index host, add it to your policy"
        )
    return out.done()


# ------------------------------------------------------------------------------- go

_GO_KEYS = ("GOPROXY", "GOSUMDB", "GOPRIVATE", "GONOPROXY", "GONOSUMDB", "GOENV", "GOVERSION")


def _go(ctx: HostContext) -> Discovery:
    out = _Collector("go")
    go = ctx.which("go")
    if go is None:
        out.notes.append("go: not installed: nothing discovered from it")
        return out.done()
    # GOTOOLCHAIN=local: never download a Go toolchain just to answer.
    answer = ctx.ask([go, "env", "-json", *_GO_KEYS], {"GOTOOLCHAIN": "local"})
    values = _json_object(answer.stdout) if answer.problem is None else {}
    if not values:
        out.notes.append(f"go: {answer.problem or 'gave no answer'}: nothing discovered from it")
        return out.done()
    goenv_path = values.get("GOENV") or str(ctx.config_home() / "go" / "env")
    text, _ = ctx.read(goenv_path) if goenv_path != "off" else (None, None)
    file_values = parse_goenv(text or "")
    version = values.get("GOVERSION", "go")

    def where(name: str) -> str:
        if name in ctx.env:
            return f"{name} environment variable"
        if name in file_values:
            return f"go env {name} ({goenv_path})"
        return f"go's default {name} ({version})"

    urls, keywords = goproxy_urls(str(values.get("GOPROXY", "")))
    out.sources += [Source(url, where("GOPROXY")) for url in urls]
    if "direct" in keywords or values.get("GOPRIVATE") or values.get("GONOPROXY"):
        out.notes.append(
            "go: some modules are fetched directly from their source hosts (GOPROXY "
            "'direct', GOPRIVATE or GONOPROXY), which cannot be known ahead: add them"
        )
    sumdb = gosumdb_url(str(values.get("GOSUMDB", "")))
    if sumdb is not None:
        out.sources.append(Source(sumdb, where("GOSUMDB")))
    return out.done()


def _json_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------ entry points, cache

_DISCOVERERS: dict[str, Callable[[HostContext], Discovery]] = {
    "python": _python,
    "node": _node,
    "rust": _rust,
    "go": _go,
}
_cache: dict[tuple[str, HostContext], Discovery] = {}
_cache_lock = threading.Lock()


def discover(ecosystem: str, ctx: HostContext | None = None) -> Discovery:
    """What `ecosystem` ("python", "node", "rust", "go") fetches from, on this machine.

    Cached per process and context. Never raises for anything the machine holds: a
    missing or failing tool gives a note instead.
    """
    return discover_many([ecosystem], ctx)[ecosystem]


def discover_many(
    ecosystems: Iterable[str], ctx: HostContext | None = None
) -> dict[str, Discovery]:
    """`discover` for several ecosystems at once, asking their tools concurrently."""
    ctx = ctx or HostContext.current()
    wanted = list(dict.fromkeys(ecosystems))
    for name in wanted:
        if name not in _DISCOVERERS:
            raise ValueError(f"unknown ecosystem {name!r}")
    with _cache_lock:
        missing = [name for name in wanted if (name, ctx) not in _cache]
    if missing:
        with ThreadPoolExecutor(max_workers=len(missing)) as pool:
            results = dict(
                zip(missing, pool.map(lambda n: _DISCOVERERS[n](ctx), missing), strict=True)
            )
        with _cache_lock:
            for name, found in results.items():
                _cache.setdefault((name, ctx), found)
    with _cache_lock:
        return {name: _cache[(name, ctx)] for name in wanted}


def clear_cache() -> None:
    """Forget every discovery (tests, or a long-lived process whose configuration changed)."""
    with _cache_lock:
        _cache.clear()
