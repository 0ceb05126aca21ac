from corridor.sandbox.home import Mask, home_masks, is_secret, scratch_dirs


def test_masks_only_existing_secrets_parents_first(tmp_path):
    home = tmp_path
    (home / ".ssh").mkdir()
    (home / ".netrc").write_text("machine x.test password p\n")
    (home / ".config" / "gh").mkdir(parents=True)
    (home / "src").mkdir()
    masks = home_masks(str(home))
    assert Mask(str(home / ".ssh"), True) in masks
    assert Mask(str(home / ".netrc"), False) in masks
    assert Mask(str(home / ".config" / "gh"), True) in masks
    assert all("src" not in m.path for m in masks)
    assert not any(m.path.endswith(".aws") for m in masks)  # absent: nothing to mask
    paths = [m.path for m in masks]
    assert paths.index(str(home / ".ssh")) < paths.index(str(home / ".config" / "gh"))


def test_scratch_dirs_that_exist(tmp_path):
    (tmp_path / ".cache").mkdir()
    assert scratch_dirs(str(tmp_path)) == [str(tmp_path / ".cache")]


def test_is_secret():
    assert is_secret("/home/dev", "/home/dev/.ssh")
    assert is_secret("/home/dev", "/home/dev/.ssh/id_ed25519")
    assert is_secret("/home/dev", "/home/dev/.config/gh/hosts.yml")
    assert not is_secret("/home/dev", "/home/dev/src")
    assert not is_secret("/home/dev", "/srv/.ssh")
