"""Services on the host side that the sandbox must never reach, recording any visitor.

Run in the lab namespace (where corridor and its gateway run, standing in for the
developer's machine) as `python host_services.py LOG PORT ABSTRACT SOCKET...`:
- TCP on every address of the namespace (dual-stack [::]:PORT): its loopback and its own
  link addresses, like a database or dev server on a laptop;
- Docker-API-like unix sockets at each SOCKET path (mode 0666: the file permission would
  let anyone in; only hiding them keeps the sandbox out);
- an abstract unix socket named ABSTRACT (like X11's or a desktop bus's).
Prints `ready` once all listen; writes one JSON line per accepted connection to LOG.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import time


def main() -> None:
    log_path, port, abstract, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    tcp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("::", port))
    listeners = [("tcp", tcp)]
    for path in paths:
        with_path = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if os.path.exists(path):
            os.unlink(path)
        with_path.bind(path)
        os.chmod(path, 0o666)
        listeners.append(("unix", with_path))
    named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    named.bind("\0" + abstract)
    sel = selectors.DefaultSelector()
    for kind, s in (*listeners, ("abstract", named)):
        s.listen(16)
        sel.register(s, selectors.EVENT_READ, kind)
    print("ready", flush=True)
    with open(log_path, "a", buffering=1) as log:
        while True:
            for key, _ in sel.select():
                conn, peer = key.fileobj.accept()  # type: ignore[union-attr]
                log.write(json.dumps({"kind": key.data, "peer": str(peer), "t": time.time()}))
                log.write("\n")
                conn.close()


if __name__ == "__main__":
    main()
