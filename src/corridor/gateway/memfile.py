"""Files that exist only in memory (memfd_create(2)): for secrets that must be handed to
something that reads files (OpenSSL's `load_cert_chain`, the gateway process's
document) without ever touching a file system."""

from __future__ import annotations

import os


def memory_file(name: str, data: bytes) -> int:
    """A close-on-exec memfd holding `data` (its offset at the end); the caller closes it.

    `name` only shows in /proc/PID/fd links, for whoever debugs."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        raise
    return fd
