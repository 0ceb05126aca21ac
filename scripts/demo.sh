#!/usr/bin/env bash
# The demo: a contained `pip download` from the package index this machine's pip is
# configured for (discovered now, never written down), one refused attempt, and the log.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STATE=$(mktemp -d)
WS=$(mktemp -d)
trap 'rm -rf "$STATE" "$WS"' EXIT

# Ask pip which index and file hosts it uses (its config, its environment, its default).
mapfile -t HOSTS < <($BIN/python - <<'PY'
import os, subprocess, sys
from urllib.parse import urlsplit
hosts = []
url = os.environ.get("PIP_INDEX_URL")
if not url:
    r = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                       capture_output=True, text=True)
    url = r.stdout.strip() if r.returncode == 0 else ""
if url:
    hosts.append(urlsplit(url).hostname)
else:
    from pip._internal.models.index import PyPI
    hosts += [PyPI.netloc, PyPI.file_storage_domain]
print("\n".join(h for h in hosts if h))
PY
)
ALLOW=()
for h in "${HOSTS[@]}"; do ALLOW+=(--allow "$h"); done
echo "== pip's index, discovered at run time: ${#HOSTS[@]} host(s) allowed"
echo "== 1. a refused attempt: only the package index is allowed (nothing leaves the machine)"
$BIN/corridor run --state-dir "$STATE" --workspace "$WS" "${ALLOW[@]}" -- \
  curl -sS -m 5 https://example.com/ || true
$BIN/corridor log --state-dir "$STATE" --blocked
echo
echo "== 2. a contained pip download through the gateway"
$BIN/corridor run --state-dir "$STATE" --workspace "$WS" "${ALLOW[@]}" -- \
  python3 -m pip download -q --no-deps --no-cache-dir -d "$WS/dl" six \
  || echo "(pip download failed: is the package index reachable from this machine?)"
ls "$WS/dl" 2>/dev/null || true
echo
echo "== 3. what was recorded for it"
$BIN/corridor log --state-dir "$STATE"
