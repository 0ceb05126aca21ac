"""Tool answers kept between runs (corridor.policy.tool_cache, through discovery).

The tools are real executables written in tmp_path that count their runs in a file and
answer like pip's probe or `npm config list --json`: each test discovers, changes one
input, discovers again, and reads the count. Only `.test` names appear.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import corridor.policy.discover as d
from corridor.policy.discover import HostContext, discover
from corridor.policy.registry_config import Discovery
from corridor.policy.templates import resolve_template
from corridor.policy.tool_cache import (
    ANSWER_CACHE_FILE,
    MAX_ANSWER_CHARS,
    MAX_ENTRIES,
    AnswerCache,
    deps_hold,
    file_deps,
    program_deps,
)

# A fake python: answers the pip probe with what `answer.json` beside it says (the
# executable and the files it depends on filled in), counting its runs.
FAKE_PYTHON = """\
import json, os, sys
here = os.path.dirname(os.path.realpath(__file__))
with open(os.path.join(here, "runs"), "a") as f:
    f.write("run\\n")
with open(os.path.join(here, "answer.json")) as f:
    out = json.load(f)
out.setdefault("executable", os.path.realpath(sys.argv[0]))
print(json.dumps(out))
"""

# A fake npm: registries from the user .npmrc (${VAR} expanded), or its default.
FAKE_NPM = """\
import json, os, re
here = os.path.dirname(os.path.realpath(__file__))
with open(os.path.join(here, "runs"), "a") as f:
    f.write("run\\n")
user = os.path.join(os.environ["HOME"], ".npmrc")
out = {"registry": "https://npm-default.test/", "userconfig": user,
       "globalconfig": os.path.join(here, "etc-npmrc"), "color": True}
if os.path.exists(user):
    for line in open(user):
        key, _, value = line.strip().partition("=")
        if key:
            out[key] = re.sub(r"\\$\\{([^}]+)\\}", lambda m: os.environ.get(m[1], ""), value)
print(json.dumps(out))
"""


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


class Machine:
    """A HOME, a project, PATH with the fake tools, and a state directory."""

    def __init__(self, root: Path):
        self.root = root
        self.home, self.project, self.bin = root / "home", root / "project", root / "bin"
        self.state = root / "state"
        for directory in (self.home, self.project, self.bin):
            directory.mkdir()
        self.env: dict[str, str] = {"HOME": str(self.home), "PATH": str(self.bin)}

    def python(self, answer: dict | None = None) -> Path:
        """The fake python on PATH, with `answer` (default: a plain pip) to give."""
        tool = self.root / "py"
        self.site = tool / "site-packages"
        self.pip_module = self.site / "pip" / "__init__.py"
        self.pip_module.parent.mkdir(parents=True, exist_ok=True)
        self.pip_module.write_text("__version__ = '1.0'\n")
        self.pip_conf = self.home / ".config" / "pip" / "pip.conf"
        default = {
            "prefix": str(tool),
            "pip": "1.0",
            "index": "https://index.test/simple/",
            "files": "https://files.test/",
            "config_files": {"user": [str(self.pip_conf)]},
            "depends_on": [str(self.site), str(self.pip_module)],
            "launcher": {},
        }
        (tool / "answer.json").parent.mkdir(parents=True, exist_ok=True)
        (tool / "answer.json").write_text(json.dumps(answer or default))
        self.python_path = _script(tool / "python3", FAKE_PYTHON)
        (self.bin / "python3").symlink_to(self.python_path)
        self.runs_file = tool / "runs"
        return self.python_path

    def npm(self) -> Path:
        """The fake npm on PATH, laid out like npm (npm/bin/npm-cli.js)."""
        package = self.root / "node_modules" / "npm"
        self.npm_path = _script(package / "bin" / "npm-cli.js", FAKE_NPM)
        (self.bin / "npm").symlink_to(self.npm_path)
        self.runs_file = package / "bin" / "runs"
        return self.npm_path

    def runs(self) -> int:
        return len(self.runs_file.read_text().splitlines()) if self.runs_file.exists() else 0

    def ctx(self, state: Path | str | None = "default") -> HostContext:
        return HostContext.of(self.env, self.project, self.state if state == "default" else state)

    def discover(self, ecosystem: str, state: Path | str | None = "default") -> Discovery:
        d.clear_cache()  # each call is a new `corridor run`: nothing kept in the process
        return discover(ecosystem, self.ctx(state))


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    yield Machine(tmp_path)
    d.clear_cache()


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# --------------------------------------------------------------------------- pip


def test_pip_answer_is_kept_and_gives_the_same_discovery(machine: Machine) -> None:
    machine.python()
    uncached = machine.discover("python", state=None)
    first = machine.discover("python")
    second = machine.discover("python")
    assert (machine.runs(), first, second) == (2, uncached, uncached)
    assert [s.url for s in first.sources] == ["https://index.test/simple/", "https://files.test/"]


def test_pip_answer_kept_in_a_private_file(machine: Machine) -> None:
    machine.python()
    machine.discover("python")
    path = machine.state / ANSWER_CACHE_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(machine.state.stat().st_mode) == 0o700
    entries = json.loads(path.read_text())["entries"]
    (entry,) = entries.values()
    assert "depends_on" not in json.loads(entry["answer"])  # bookkeeping is not kept


PIP_CHANGES: dict[str, Callable[[Machine], None]] = {
    "interpreter touched": lambda m: _touch_later(m.python_path),
    "interpreter rewritten": lambda m: m.python_path.write_text(m.python_path.read_text()),
    "pip module changed": lambda m: m.pip_module.write_text("__version__ = '2.0'\n"),
    "package installed on sys.path": lambda m: (m.site / "other").mkdir(),
    "steering variable set": lambda m: m.env.update(VIRTUAL_ENV=str(m.root)),
    "PIP_ variable set": lambda m: m.env.update(PIP_NO_CACHE_DIR="1"),
    "PYTHON variable set": lambda m: m.env.update(PYTHONUTF8="1"),
    "XDG variable set": lambda m: m.env.update(XDG_CONFIG_HOME=str(m.root)),
    "HOME changed": lambda m: m.env.update(HOME=str(m.project)),
    "PATH changed": lambda m: m.env.update(PATH=f"{m.bin}:{m.root}"),
}


@pytest.mark.parametrize("change", PIP_CHANGES.values(), ids=PIP_CHANGES.keys())
def test_pip_is_asked_again_when_an_input_changes(
    machine: Machine, change: Callable[[Machine], None]
) -> None:
    machine.python()
    machine.discover("python")
    change(machine)
    machine.discover("python")
    machine.discover("python")
    assert machine.runs() == 2  # once before the change, once after: then kept again


def test_pip_not_asked_again_for_a_variable_that_does_not_steer_it(machine: Machine) -> None:
    machine.python()
    machine.discover("python")
    machine.env["EDITOR"] = "vi"
    machine.discover("python")
    assert machine.runs() == 1


def test_pip_config_file_change_is_seen_at_once_without_asking_pip(machine: Machine) -> None:
    machine.python()
    before = machine.discover("python")
    machine.pip_conf.parent.mkdir(parents=True)
    machine.pip_conf.write_text("[global]\nindex-url = https://mirror.test/simple/\n")
    after = machine.discover("python")
    assert before.sources[0].url == "https://index.test/simple/"
    assert [s.url for s in after.sources] == ["https://mirror.test/simple/"]
    assert machine.runs() == 1  # the file is read every run; pip's answer named it


def test_answer_from_an_unknown_launcher_is_not_kept(machine: Machine) -> None:
    machine.python()
    answer = json.loads((machine.root / "py" / "answer.json").read_text())
    other = _script(machine.root / "elsewhere" / "python3", "")
    answer["executable"] = str(other)
    (machine.root / "py" / "answer.json").write_text(json.dumps(answer))
    first, second = machine.discover("python"), machine.discover("python")
    assert (machine.runs(), first) == (2, second)


def test_pyenv_shim_answer_kept_until_the_version_file_changes(machine: Machine) -> None:
    root = machine.root / "pyenv"
    real = _script(root / "versions" / "1.0" / "bin" / "python3", "")
    (root / "pyenv.d").mkdir()
    (root / "libexec").mkdir()
    shim = _script(root / "shims" / "python3", FAKE_PYTHON)
    machine.python()
    (machine.bin / "python3").unlink()
    (machine.bin / "python3").symlink_to(shim)
    answer = json.loads((machine.root / "py" / "answer.json").read_text())
    answer |= {
        "executable": str(real),
        "launcher": {
            "PYENV_ROOT": str(root),
            "PYENV_HOOK_PATH": str(root / "pyenv.d"),
            "PYENV_DIR": str(machine.root / "empty" / "neutral"),
        },
    }
    (root / "shims" / "answer.json").write_text(json.dumps(answer))
    machine.runs_file = root / "shims" / "runs"
    machine.discover("python")
    machine.discover("python")
    assert machine.runs() == 1
    (root / "version").write_text("1.0\n")  # `pyenv global`
    machine.discover("python")
    (machine.root / "empty").mkdir()
    (machine.root / "empty" / ".python-version").write_text("1.0\n")  # above its cwd
    machine.discover("python")
    (root / "pyenv.d" / "which.bash").write_text("")  # a new hook
    machine.discover("python")
    assert machine.runs() == 4


def test_failed_answer_is_not_kept(machine: Machine) -> None:
    machine.python()
    (machine.root / "py" / "answer.json").unlink()  # the fake fails: exit 1
    first, second = machine.discover("python"), machine.discover("python")
    assert machine.runs() == 2
    assert first == second
    assert any("failed (exit 1" in note for note in first.notes)


# --------------------------------------------------------------------------- npm


def test_npm_answer_is_kept_and_gives_the_same_discovery(machine: Machine) -> None:
    machine.npm()
    (machine.home / ".npmrc").write_text("@corp:registry=https://corp.test/npm/\n")
    uncached = machine.discover("node", state=None)
    first, second = machine.discover("node"), machine.discover("node")
    assert (machine.runs(), first, second) == (2, uncached, uncached)
    assert [s.url for s in first.sources] == ["https://npm-default.test/", "https://corp.test/npm/"]


NPM_CHANGES: dict[str, Callable[[Machine], None]] = {
    "user .npmrc content": lambda m: (m.home / ".npmrc").write_text(
        "registry=https://mirror.test/\n"
    ),
    "user .npmrc removed": lambda m: (m.home / ".npmrc").unlink(),
    "global npmrc created": lambda m: (m.npm_path.parent / "etc-npmrc").write_text(""),
    "builtin npmrc created": lambda m: (m.npm_path.parent.parent / "npmrc").write_text(""),
    "npm script touched": lambda m: _touch_later(m.npm_path),
    "variable named in .npmrc": lambda m: m.env.update(NPM_TOKEN_HOST="other.test"),
    "npm_config_ variable": lambda m: m.env.update(npm_config_fund="false"),
    "NPM_CONFIG_ variable": lambda m: m.env.update(NPM_CONFIG_FUND="false"),
    "NODE_ variable": lambda m: m.env.update(NODE_OPTIONS="--no-warnings"),
}


@pytest.mark.parametrize("change", NPM_CHANGES.values(), ids=NPM_CHANGES.keys())
def test_npm_is_asked_again_when_an_input_changes(
    machine: Machine, change: Callable[[Machine], None]
) -> None:
    machine.npm()
    (machine.home / ".npmrc").write_text("@x:registry=https://${NPM_TOKEN_HOST}/\n")
    machine.env["NPM_TOKEN_HOST"] = "x.test"
    machine.discover("node")
    change(machine)
    machine.discover("node")
    machine.discover("node")
    assert machine.runs() == 2


def test_npm_user_config_change_is_in_the_discovery(machine: Machine) -> None:
    machine.npm()
    machine.discover("node")
    (machine.home / ".npmrc").write_text("registry=https://mirror.test/\n")
    assert [s.url for s in machine.discover("node").sources] == ["https://mirror.test/"]


def test_template_resolves_the_same_with_and_without_kept_answers(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine.python()
    machine.npm()
    for name in list(os.environ):  # this process's environment is what templates read
        monkeypatch.delenv(name)
    for name, value in machine.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(machine.project)
    resolved = []
    for state in (None, machine.state, machine.state):
        d.clear_cache()
        resolved.append(resolve_template("dependency-update", state_dir=state))
    assert resolved[0] == resolved[1] == resolved[2]
    assert machine.runs() == 2  # npm: without, then kept (python's count is elsewhere)


# ------------------------------------------------------ a cache that cannot be used


def _cache_file(m: Machine) -> Path:
    return m.state / ANSWER_CACHE_FILE


BROKEN_CACHES: dict[str, Callable[[Path], None]] = {
    "not JSON": lambda p: p.write_text("{nope"),
    "JSON of another shape": lambda p: p.write_text('["entries"]'),
    "another format": lambda p: p.write_text(json.dumps({"format": 0, "entries": {}})),
    "bad entries": lambda p: p.write_text(
        json.dumps({"format": 1, "entries": {"k": {"answer": 1, "deps": "x", "at": "t"}}})
    ),
    "binary": lambda p: p.write_bytes(b"\xff\xfe\x00garbage"),
    "a directory": lambda p: (p.unlink(), p.mkdir()),
    "a symlink": lambda p: (p.rename(p.with_name("real")), p.symlink_to(p.with_name("real"))),
}


@pytest.mark.parametrize("breakage", BROKEN_CACHES.values(), ids=BROKEN_CACHES.keys())
def test_broken_cache_is_ignored(machine: Machine, breakage: Callable[[Path], None]) -> None:
    machine.python()
    expected = machine.discover("python")
    breakage(_cache_file(machine))
    assert machine.discover("python") == expected
    assert machine.runs() == 2


def test_cache_others_could_write_is_not_believed(machine: Machine) -> None:
    machine.python()
    machine.discover("python")
    _cache_file(machine).chmod(0o666)
    machine.discover("python")
    assert machine.runs() == 2
    assert stat.S_IMODE(_cache_file(machine).stat().st_mode) == 0o600  # rewritten privately


def test_unwritable_state_directory_is_ignored(machine: Machine) -> None:
    machine.python()
    machine.state.write_text("a file, not a directory")
    expected = machine.discover("python", state=None)
    assert machine.discover("python") == machine.discover("python") == expected
    assert machine.runs() == 3


def test_state_directory_inside_the_project_is_not_used(machine: Machine) -> None:
    machine.python()
    inside = machine.project / ".state"
    machine.discover("python", state=inside)
    machine.discover("python", state=inside)
    assert machine.runs() == 2
    assert not inside.exists()


# ------------------------------------------------------------- the cache itself


def test_cache_keeps_the_newest_entries(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path / ANSWER_CACHE_FILE)
    for i in range(MAX_ENTRIES + 5):
        cache.put(f"key{i}", f"answer{i}", [])
    assert cache.get("key0", {}) is None
    assert cache.get("key4", {}) is None
    assert cache.get("key5", {}) == "answer5"
    assert cache.get(f"key{MAX_ENTRIES + 4}", {}) == f"answer{MAX_ENTRIES + 4}"


def test_cache_does_not_keep_a_huge_answer(tmp_path: Path) -> None:
    cache = AnswerCache(tmp_path / ANSWER_CACHE_FILE)
    cache.put("big", "x" * (MAX_ANSWER_CHARS + 1), [])
    assert cache.get("big", {}) is None


DEPS_CASES = {
    "unchanged": (lambda p: None, True),
    "touched": (_touch_later, False),
    "removed": (lambda p: p.unlink(), False),
    "same content rewritten as a new file": (
        lambda p: (p.unlink(), p.write_text("same"), os.utime(p, ns=(0, 0))),
        False,
    ),
}


@pytest.mark.parametrize(("change", "holds"), DEPS_CASES.values(), ids=DEPS_CASES.keys())
def test_file_dependency(tmp_path: Path, change: Callable[[Path], None], holds: bool) -> None:
    path = tmp_path / "f"
    path.write_text("same")
    os.utime(path, ns=(0, 0))
    deps = file_deps([path])
    change(path)
    assert deps_hold(deps, {}) is holds


def test_absent_file_dependency_breaks_when_it_appears(tmp_path: Path) -> None:
    deps = file_deps([tmp_path / "later"])
    assert deps_hold(deps, {})
    (tmp_path / "later").write_text("")
    assert not deps_hold(deps, {})


def test_program_dependencies_include_the_env_interpreter(tmp_path: Path) -> None:
    interpreter = _script(tmp_path / "bin" / "node", "")
    script = tmp_path / "tool.js"
    script.write_text("#!/usr/bin/env node\n")
    deps = program_deps(str(script), {"PATH": str(tmp_path / "bin")})
    assert [name for _, name, _ in deps] == [str(script), str(interpreter)]


def test_state_directory_around_the_project_is_not_used(machine: Machine) -> None:
    machine.python()
    machine.discover("python", state=machine.project.parent)
    machine.discover("python", state=machine.project.parent)
    assert machine.runs() == 2
    assert not (machine.project.parent / ANSWER_CACHE_FILE).exists()
