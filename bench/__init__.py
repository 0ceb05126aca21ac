"""corridor's benchmark harness: `make bench` (entry point: `python -m bench.run`).

Everything runs inside one network namespace the harness creates (`cor-bench-<pid>`),
with only a loopback interface: the upstream (nginx), the peers (squid, tinyproxy,
mitmproxy), corridor's gateway and the load client. Nothing can leave the machine.
"""
