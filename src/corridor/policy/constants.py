"""Constants the policy shares with the gateway, in a module that imports nothing.

The gateway process reads these at run time and must not load pydantic (the policy model)
to get them; `corridor.policy.model` and `corridor.policy.credentials` re-export them.
"""

from __future__ import annotations

import re

POLICY_VERSION = 1  # the only version this code reads; bump with a migration note
MIN_PORT, MAX_PORT = 1, 65535  # port 0 is "any port" to the kernel, never a destination
# An allow rule without `ports` is for the web: HTTPS first, HTTP for redirects/plain mirrors.
DEFAULT_ALLOW_PORTS: tuple[int, ...] = (443, 80)

# Where a credential's real value goes in a `template:` for `inject: header:NAME`.
VALUE_SLOT = "{value}"
# C0 controls and DEL: never in a header value, a user name, a template or a secret.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")

# Address ranges wider than these span many unrelated networks (more than one IPv4 /8
# allocation, more than a typical IPv6 provider allocation), like a wildcard on a TLD.
BROAD_IPV4_PREFIX = 8
BROAD_IPV6_PREFIX = 32
