"""The gateway process stays lean: its modules load no pydantic, cryptography, click, rich
or YAML (together most of its memory; see corridor.policy.compiled).

Checked in a fresh interpreter: this test process has long imported all of them.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What the gateway process imports to serve (gateway/child.py), and what must stay out.
GATEWAY_MODULES = (
    "corridor.gateway.server",
    "corridor.gateway.credentials",
    "corridor.policy.compiled",
    "corridor.policy.decide",
)
FORBIDDEN = ("pydantic", "pydantic_core", "cryptography", "click", "rich", "yaml")


def loaded_after(code: str) -> list[str]:
    """The top-level packages loaded in a fresh interpreter after running `code`."""
    probe = (
        code
        + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(done.stdout)


def test_the_gateway_modules_load_none_of_the_heavy_packages():
    loaded = loaded_after("\n".join(f"import {m}" for m in GATEWAY_MODULES))
    assert "corridor" in loaded and "h11" in loaded  # the probe sees what was imported
    assert [m for m in loaded if m.startswith(FORBIDDEN)] == []


def test_the_policy_package_loads_its_parts_on_first_use():
    loaded = loaded_after("from corridor.policy import Target, decide, DEFAULT_ALLOW_PORTS")
    assert [m for m in loaded if m.startswith(FORBIDDEN)] == []
    # ...and the model still comes when asked for.
    assert "pydantic" in loaded_after("from corridor.policy import Policy")


@pytest.mark.parametrize("name", ["CredentialSpec", "parse_credentials"])
def test_the_brokers_model_names_still_resolve(name: str):
    # Re-exported lazily by corridor.gateway.credentials: they load pydantic only then.
    assert "pydantic" in loaded_after(f"from corridor.gateway.credentials import {name}")
