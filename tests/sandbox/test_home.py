from corridor.sandbox.home import HomeEntry, Mount, is_secret, plan_home


def test_home_is_fresh_tmpfs_with_entries_bound_read_only_and_secrets_left_out():
    entries = [
        HomeEntry(".ssh", True),
        HomeEntry(".pyenv", True),
        HomeEntry(".netrc", False),
        HomeEntry(".cache", True),
        HomeEntry("src", True),
        HomeEntry(".config", True),
    ]
    plan = plan_home("/home/dev", entries, [".config/gh"])
    assert plan[0] == Mount("tmpfs", "/home/dev")
    assert Mount("ro-bind", "/home/dev/.pyenv") in plan
    assert Mount("ro-bind", "/home/dev/src") in plan
    assert Mount("tmpfs", "/home/dev/.cache") in plan  # writable scratch
    assert Mount("mask", "/home/dev/.config/gh") in plan
    paths = [m.path for m in plan]
    assert "/home/dev/.ssh" not in paths and "/home/dev/.netrc" not in paths
    # The nested mask comes after the bind of its parent, or it would be hidden.
    assert paths.index("/home/dev/.config/gh") > paths.index("/home/dev/.config")


def test_is_secret():
    assert is_secret("/home/dev", "/home/dev/.ssh")
    assert is_secret("/home/dev", "/home/dev/.ssh/id_ed25519")
    assert is_secret("/home/dev", "/home/dev/.config/gh/hosts.yml")
    assert not is_secret("/home/dev", "/home/dev/src")
    assert not is_secret("/home/dev", "/srv/.ssh")
