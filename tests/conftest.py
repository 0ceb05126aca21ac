"""Suite-wide setup: `tests` importable as a package, and the `lab` marker's skip logic.

Tests under tests/lab and tests/escape build network namespaces (the lab). They carry the
`lab` marker; where the lab cannot be built they are skipped with the reason and what
would make them run (shown by `pytest -ra`). With CORRIDOR_REQUIRE_LAB=1 (as in CI) that
reason fails them instead: a CI machine that cannot build the lab is a broken CI machine.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
# `tests.lab...` imports (and `python -m tests.lab.world`) need the repository root.
if str(TESTS_DIR.parent) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR.parent))

LAB_DIRS = (TESTS_DIR / "lab", TESTS_DIR / "escape")
REQUIRE_LAB = "CORRIDOR_REQUIRE_LAB"
_REASON = pytest.StashKey[str | None]()


def _needs_lab(item: pytest.Item) -> bool:
    path = Path(item.path)
    return any(path.is_relative_to(d) for d in LAB_DIRS) or item.get_closest_marker("lab")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    lab_items = [item for item in items if _needs_lab(item)]
    if not lab_items:
        return
    from tests.lab.netns import unavailable_reason

    reason = unavailable_reason(os.getpid())
    required = os.environ.get(REQUIRE_LAB) == "1"
    if required:
        config.stash[_REASON] = reason  # failed in pytest_runtest_setup, not skipped
    for item in lab_items:
        item.add_marker(pytest.mark.lab)
        if reason is not None and not required:
            item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_setup(item: pytest.Item) -> None:
    reason = item.config.stash.get(_REASON, None)
    if reason is not None and item.get_closest_marker("lab"):
        pytest.fail(f"{REQUIRE_LAB}=1 but the lab cannot be built: {reason}", pytrace=False)


@pytest.fixture(scope="session")
def lab():
    """The lab (tests/lab/harness.py), built once per test session and removed at its end."""
    from tests.lab.harness import lab_session

    with lab_session() as built:
        yield built
