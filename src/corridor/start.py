"""The `corridor` command's entry point: for `corridor run`, the gateway process first.

The gateway is a fresh interpreter that needs ~90 ms to import what serves; started here,
before click and the rest of the CLI are imported, its start overlaps all of this
process's own (gateway/process.py, cli.py `run`). Other commands go straight to the CLI.
"""

from __future__ import annotations

import sys
from typing import NoReturn


def main() -> NoReturn:
    """Run the `corridor` command line."""
    gateway = None
    if sys.argv[1:2] == ["run"]:
        from corridor.errors import UserError
        from corridor.gateway.process import GatewayProcess

        try:
            gateway = GatewayProcess.spawn()
        except UserError:
            gateway = None  # `run` tries again, and says why if it still cannot
    from corridor.cli import main as cli_main

    cli_main(gateway)
