#!/usr/bin/env bash
# The demo: the python-deps template (its package index discovered now from pip's own
# configuration, never written down), a refused attempt, a contained `pip download`,
# and the log of each.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STATE=$(mktemp -d)
WS=$(mktemp -d)
trap 'rm -rf "$STATE" "$WS"' EXIT
RUN=($BIN/corridor run --state-dir "$STATE" --workspace "$WS" --policy python-deps)

# corridor refuses to dial internal and reserved addresses. Where this machine reaches
# its package index through such an address (a company mirror on a private network, a
# sandboxed CI network), the demo says so and allows exactly that address.
while read -r flag; do
  [ -n "$flag" ] && RUN+=(--unsafe-allow-private "$flag")
done < <($BIN/corridor policy show python-deps | sed -n -E 's/^  - host: //p' | $BIN/python -c '
import ipaddress, socket, sys
for host in sys.stdin.read().split():
    try:
        infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except OSError:
        continue
    for addr in sorted({i[4][0] for i in infos}):
        if not ipaddress.ip_address(addr).is_global:
            print(f"note: {host} resolves to {addr}, not a public address: allowed explicitly",
                  file=sys.stderr)
            print(ipaddress.ip_network(addr))
')

echo "== 0. what python-deps allows on this machine (discovered at run time)"
$BIN/corridor policy show python-deps | grep -E '^  - host|^  # ' || true
echo
echo "== 1. a refused attempt: only the package index is allowed (nothing leaves the machine)"
"${RUN[@]}" -- curl -sS -m 5 https://example.com/ || true
$BIN/corridor log --state-dir "$STATE" --blocked
echo
echo "== 2. a contained pip download through the gateway"
"${RUN[@]}" -- python3 -m pip download -q --no-deps --no-cache-dir -d "$WS/dl" six \
  || echo "(pip download failed: is the package index reachable from this machine?)"
ls "$WS/dl" 2>/dev/null || true
echo
echo "== 3. what was recorded for it"
$BIN/corridor log --state-dir "$STATE"
