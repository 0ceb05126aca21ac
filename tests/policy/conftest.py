"""Fixtures shared by the policy tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from corridor.policy.discover import clear_cache


@pytest.fixture
def quiet_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A process environment where no package manager is installed or configured, so that
    the discovering templates resolve the same everywhere."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    for name in ("PIP_CONFIG_FILE", "PIP_INDEX_URL", "NPM_CONFIG_USERCONFIG", "GOPROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    clear_cache()
    return tmp_path
