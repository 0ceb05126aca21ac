import pytest

from corridor.errors import UserError
from corridor.sandbox import launch


def test_missing_tools_are_named_with_the_package_to_install(monkeypatch):
    real_which = launch.shutil.which

    def which(name, path=None):
        return None if name in ("bwrap", "nft") else real_which(name, path=path)

    monkeypatch.setattr(launch.shutil, "which", which)
    with pytest.raises(UserError) as e:
        launch.find_tools()
    assert e.value.message == "cannot build the sandbox: bwrap, nft not found"
    assert e.value.hint == "install them, e.g. `sudo apt-get install bubblewrap nftables`"


@pytest.mark.parametrize(
    ("path", "value", "fix"),
    [
        ("/proc/sys/kernel/unprivileged_userns_clone", "0", "unprivileged_userns_clone=1"),
        ("/proc/sys/user/max_user_namespaces", "0", "max_user_namespaces=15000"),
        ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1", "AppArmor"),
    ],
)
def test_disabled_user_namespaces_say_how_to_enable_them(monkeypatch, path, value, fix):
    real_read = launch.Path.read_text

    def read_text(self, *a, **kw):
        if str(self) == path:
            return value + "\n"
        if str(self).startswith("/proc/sys/"):
            raise FileNotFoundError(str(self))
        return real_read(self, *a, **kw)

    monkeypatch.setattr(launch.Path, "read_text", read_text)
    with pytest.raises(UserError) as e:
        launch.check_user_namespaces()
    assert "user namespaces are disabled" in e.value.message and path in e.value.message
    assert fix in e.value.hint


def test_enabled_user_namespaces_pass(monkeypatch):
    def read_text(self, *a, **kw):
        raise FileNotFoundError(str(self))

    monkeypatch.setattr(launch.Path, "read_text", read_text)
    launch.check_user_namespaces()
