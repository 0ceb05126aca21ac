"""docs/threat-model.md lists every escape attempt and every test it cites exists."""

from __future__ import annotations

import re
from pathlib import Path

from tests.escape import test_escape, test_other_netns_socket, test_tcp_by_name
from tests.escape.test_escape import TABLE

DOC = Path(__file__).resolve().parents[2] / "docs" / "threat-model.md"


def test_every_attempt_is_listed_with_its_outcome() -> None:
    rows = {
        line.split("|")[1].strip()
        for line in DOC.read_text().splitlines()
        if line.startswith("| ") and line.count("|") >= 3
    }
    missing = [attempt.name for _, attempt in TABLE if attempt.name not in rows]
    assert missing == []


def test_every_cited_test_exists() -> None:
    modules = {
        "test_escape.py": test_escape,
        "test_tcp_by_name.py": test_tcp_by_name,
        "test_other_netns_socket.py": test_other_netns_socket,
    }
    text = DOC.read_text()
    cited = re.findall(r"`(test_\w+\.py)::(\w+)`", text)
    cited += [("test_tcp_by_name.py", name) for name in re.findall(r", `(test_\w+)`", text)]
    assert cited
    for module, name in cited:
        assert hasattr(modules[module], name), f"{module}::{name}"
