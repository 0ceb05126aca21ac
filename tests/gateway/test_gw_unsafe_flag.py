"""`corridor run --unsafe-allow-private CIDR`: values are checked before anything starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

# name: (value, the error line corridor prints)
# fmt: off
REFUSED = {
    "everything": ("0.0.0.0/0", "corridor: error: --unsafe-allow-private 0.0.0.0/0: "
                                "0.0.0.0/0 is not inside one special-use range"),
    "public range": ("93.184.216.0/24", "corridor: error: --unsafe-allow-private "
                     "93.184.216.0/24: 93.184.216.0/24 is not inside one special-use range"),
    "not a range": ("intranet", "corridor: error: --unsafe-allow-private intranet: "
                                "not an address range"),
}
# fmt: on


@pytest.mark.parametrize(("value", "error"), REFUSED.values(), ids=REFUSED.keys())
def test_a_range_that_opens_nothing_is_a_usage_error(tmp_path, value: str, error: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "corridor", "run", "--state-dir", str(tmp_path / "s"),
         "--unsafe-allow-private", value, "--", "touch", str(tmp_path / "ran")],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == error
    assert r.stderr.splitlines()[1].startswith("  hint: ")
    assert not (tmp_path / "ran").exists()
