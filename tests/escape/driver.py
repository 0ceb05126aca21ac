"""Runs a batch of escape attempts INSIDE one sandbox, one after the other.

Between attempts it hands control to the test outside through files in the workspace
(`NAME.start` -> wait for `NAME.start-ok`, then `NAME.end` -> `NAME.end-ok`), so the test
can mark the world's logs right before and right after each attempt and tell which
attempt caused what. Each attempt's exit code, output and time window go to
`NAME.result` (JSON). Standard library only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HANDSHAKE_TIMEOUT_S = 60.0
POLL_S = 0.005


def wait_for(path: str) -> None:
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"driver: the test outside never wrote {path}")
        time.sleep(POLL_S)


def step(ctl: str, name: str, what: str) -> None:
    open(os.path.join(ctl, f"{name}.{what}"), "w").close()
    wait_for(os.path.join(ctl, f"{name}.{what}-ok"))


def text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""


def main() -> None:
    ctl = sys.argv[1]
    with open(os.path.join(ctl, "plan.json")) as f:
        plan = json.load(f)
    env = {**os.environ, "PY": sys.executable}
    for attempt in plan:
        name = attempt["name"]
        step(ctl, name, "start")
        t0 = time.time()
        try:
            done = subprocess.run(
                attempt["argv"],
                capture_output=True,
                text=True,
                timeout=attempt["timeout"],
                env=env,
                stdin=subprocess.DEVNULL,
            )
            rc, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as e:
            rc, out, err = None, text(e.stdout), text(e.stderr) + "\n(timed out)"
        t1 = time.time()
        result = {"rc": rc, "out": out, "err": err, "t0": t0, "t1": t1}
        with open(os.path.join(ctl, f"{name}.result"), "w") as f:
            json.dump(result, f)
        step(ctl, name, "end")


if __name__ == "__main__":
    main()
