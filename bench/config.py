"""The benchmark's fixed choices: addresses, ports, sizes, durations, paths.

Every address here exists only inside the namespace the harness creates: the upstream's
address is put on that namespace's `lo`, so traffic to it is loopback traffic and has no
route anywhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
# Raw outputs, logs, certificates, bodies, peer configs: gitignored, rebuilt every run.
WORK_DIR = BENCH_DIR / "results"
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "results.md"
RESULTS_PNG = BENCH_DIR / "results.png"
# The peers that do not come from Debian live beside the harness (all gitignored).
MITM_VENV = BENCH_DIR / ".venv-mitm"
TOOLS_VENV = BENCH_DIR / ".venv-tools"  # matplotlib (the chart) and py-spy (profiles)
NPM_PREFIX = BENCH_DIR / ".npm"  # srt and the Codex CLI

NAMESPACE_PREFIX = "cor-bench-"

# The upstream's name and address. A documentation address (RFC 5737) on the bench
# namespace's `lo`: not loopback (so inside corridor's sandbox a connect to it is
# redirected to the gateway like any internet address), yet it never leaves the machine.
UPSTREAM_NAME = "bench.test"
UPSTREAM_V4 = "192.0.2.80"
HTTP_PORT = 80
HTTPS_PORT = 443
SMALL_PATH = "/small"
BIG_PATH = "/big"
SMALL_BYTES = 100
BIG_BYTES = 256 * 1024 * 1024

# Peers listen on loopback inside the namespace, each on its own port.
SQUID_PORT = 3129
TINYPROXY_PORT = 8888
MITM_PASS_PORT = 8081  # mitmproxy with every host ignored: CONNECT tunnels pass through
MITM_INTERCEPT_PORT = 8082  # mitmproxy terminating TLS (its CA) and re-encrypting upstream
SRT_HTTP_PORT = 3128  # srt's own choice inside its sandbox; recorded, not configured

# corridor's policy for every corridor row: the name, and its address as a CIDR rule (the
# gateway refuses private and reserved addresses unless a rule names them).
CORRIDOR_ALLOW = (UPSTREAM_NAME, UPSTREAM_V4)
# The inspecting rows: the same upstream, its requests seen in clear text.
INSPECT_POLICY = f"""\
version: 1
allow:
  - host: {UPSTREAM_NAME}
    inspect: true
  - cidr: {UPSTREAM_V4}/32
"""

APT_PACKAGES = ("nginx-light", "squid", "tinyproxy", "bubblewrap", "socat", "ripgrep", "curl")
MITMPROXY_REQUIREMENT = "mitmproxy>=11,<12"  # the version the figures were taken with
TOOLS_REQUIREMENTS = ("matplotlib>=3.7", "py-spy>=0.3")
NPM_PACKAGES = ("@anthropic-ai/sandbox-runtime", "@openai/codex")

IDLE_TUNNELS = 1000
# One connection per request: a four-tuple in TIME_WAIT for each; the bench namespace gets
# a wide port range so a long run at thousands of connections per second never runs dry.
LOCAL_PORT_RANGE = "1024 65000"


@dataclass(frozen=True, slots=True)
class Durations:
    """How long and how often: the full run, or the quick one for development."""

    rounds: int  # each cell is measured once per round; figures are medians over rounds
    warmup_s: float  # connections in this first part are not counted
    window_s: float  # the measured window of one cell
    sandbox_reps: int  # `... -- true` repetitions per sandbox row
    sandbox_rounds: int  # curl loops and big downloads per sandbox (one curl is ~5 ms: noisy)
    curl_requests: int  # sequential curl GETs inside one sandbox
    audit_events: int


FULL = Durations(
    rounds=3,
    warmup_s=0.5,
    window_s=3.0,
    sandbox_reps=15,
    sandbox_rounds=5,
    curl_requests=100,
    audit_events=200_000,
)
QUICK = Durations(
    rounds=1,
    warmup_s=0.3,
    window_s=1.0,
    sandbox_reps=3,
    sandbox_rounds=1,
    curl_requests=20,
    audit_events=50_000,
)


def durations() -> Durations:
    """QUICK when BENCH_QUICK is set to anything but 0 or empty, else FULL."""
    return QUICK if os.environ.get("BENCH_QUICK", "") not in ("", "0") else FULL
