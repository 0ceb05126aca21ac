from pathlib import Path

from corridor.sandbox.bwrap import INIT_CAPS, VIEWS_MOUNT, SandboxSpec, bwrap_argv


def _argv(tmp_path: Path, rootless: bool) -> list[str]:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".config" / "gh").mkdir(parents=True)
    (home / ".gitconfig").write_text("[user]\n")
    ws = home / "project"
    ws.mkdir()
    spec = SandboxSpec(workspace=ws, home=home, cwd=ws, rootless=rootless)
    return bwrap_argv("/usr/bin/bwrap", spec, ["python3", "-I", "init.py", "{}"])


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_namespaces_and_read_only_root(tmp_path):
    argv = _argv(tmp_path, rootless=True)
    assert argv[:2] == ["/usr/bin/bwrap", "--unshare-user"]
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--as-pid-1"):
        assert flag in argv
    assert argv[argv.index("--ro-bind") + 1 : argv.index("--ro-bind") + 3] == ["/", "/"]
    assert {"/tmp", "/run"} <= set(_pairs(argv, "--tmpfs"))
    assert argv[-4:] == ["python3", "-I", "init.py", "{}"]
    assert _pairs(argv, "--cap-add") == list(INIT_CAPS)


def test_root_does_not_ask_for_a_user_namespace(tmp_path):
    assert "--unshare-user" not in _argv(tmp_path, rootless=False)


def test_workspace_writable_and_home_left_to_the_init(tmp_path):
    argv = _argv(tmp_path, rootless=True)
    home = tmp_path / "home"
    assert str(home / "project") in _pairs(argv, "--bind")
    # The home view (overlay + masks) is the init's job: bwrap binds nothing of it.
    assert not any(str(home / ".ssh") in a for a in argv)
    assert str(home) not in _pairs(argv, "--tmpfs")


def test_views_are_bound_read_only_after_the_run_tmpfs(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    views = tmp_path / "views"
    views.mkdir()
    spec = SandboxSpec(
        workspace=home, home=home, cwd=home, rootless=True, views_dir=views,
        views=((str(home / ".gitconfig"), "0"),),
    )  # fmt: skip
    argv = bwrap_argv("/usr/bin/bwrap", spec, ["init"])
    at = argv.index(str(views))
    assert argv[at - 1 : at + 2] == ["--ro-bind", str(views), VIEWS_MOUNT]
    assert at > argv.index("/run")  # the /run tmpfs first, or it would hide the bind
