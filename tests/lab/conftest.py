"""Fixtures of the lab (see tests/lab/harness.py for what a `Lab` offers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.lab.harness import Lab, lab_session


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The lab, built once per test session and removed at its end, even after failures."""
    with lab_session() as built:
        yield built
