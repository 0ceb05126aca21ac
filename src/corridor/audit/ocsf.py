"""Events as OCSF 1.3.0 records, for a SIEM. Pure.

Mapping (schema: https://schema.ocsf.io/1.3.0, category 4 "Network Activity"):
- `dns`             -> DNS Activity (4003), activity 2 Response (corridor answers every
                       query itself: an address for allowed names, NXDOMAIN for the rest);
- `connection`      -> Network Activity (4001), activity 1 Open when allowed, 5 Refuse when
                       denied;
- `connection_end`  -> Network Activity (4001), activity 2 Close, with bytes and duration;
- `http`            -> HTTP Activity (4002), activity from the method (Get, Post...);
- `package`         -> HTTP Activity (4002), activity Get, the package in `unmapped`.
Session boundaries, checkpoints, credential uses and exfiltration flags have no class
among these three and are left out (`to_ocsf` returns None); the signed report carries them.

Every record carries the base event's required attributes (activity_id, category_uid,
class_uid, type_uid, severity_id, time, metadata with product and version), the class's
own (DNS: `query` with `hostname`; HTTP: `http_request`), the policy decision as the
security-control attributes (action_id, disposition_id), and corridor's own fields
(session, record index, rule, reason) in `unmapped`.
"""

from __future__ import annotations

from typing import Any

from corridor.audit.events import ALLOW, DENY, WOULD_DENY, Event, Kind

OCSF_VERSION = "1.3.0"
PRODUCT = {"name": "corridor", "vendor_name": "corridor"}
CATEGORY_NETWORK = 4
NETWORK_ACTIVITY = 4001
HTTP_ACTIVITY = 4002
DNS_ACTIVITY = 4003
CLASS_NAMES = {
    NETWORK_ACTIVITY: "Network Activity",
    HTTP_ACTIVITY: "HTTP Activity",
    DNS_ACTIVITY: "DNS Activity",
}
NET_OPEN, NET_CLOSE, NET_REFUSE = 1, 2, 5
DNS_RESPONSE = 2
# HTTP Activity's activity_id in 1.3.0 (PATCH came later: it is 99 Other here, named).
HTTP_METHODS = {
    "CONNECT": 1, "DELETE": 2, "GET": 3, "HEAD": 4, "OPTIONS": 5, "POST": 6, "PUT": 7,
    "TRACE": 8,
}  # fmt: skip
OTHER = 99
SEVERITY_INFORMATIONAL, SEVERITY_LOW, SEVERITY_MEDIUM = 1, 2, 3
ACTION_ALLOWED, ACTION_DENIED = 1, 2
DISPOSITION_ALLOWED, DISPOSITION_BLOCKED = 1, 2
STATUS_SUCCESS, STATUS_FAILURE = 1, 2
DIRECTION_OUTBOUND = 2
PROTOCOL_TCP, PROTOCOL_UDP = 6, 17
RCODE_NOERROR, RCODE_NXDOMAIN = 0, 3
# The sandbox is the initiator of everything corridor records.
SANDBOX_ENDPOINT_NAME = "corridor sandbox"


def to_ocsf(event: Event, index: int | None = None, product_version: str = "") -> dict | None:
    """The OCSF record for `event`, or None for kinds outside the three network classes.

    `index` is the record's place in its session's chain, used for `metadata.uid`.
    """
    mapper = _MAPPERS.get(event.kind)
    if mapper is None:
        return None
    class_uid, activity_id, activity_name, fields = mapper(event)
    record: dict[str, Any] = {
        "class_uid": class_uid,
        "class_name": CLASS_NAMES[class_uid],
        "category_uid": CATEGORY_NETWORK,
        "category_name": "Network Activity",
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "time": int(event.ts * 1000),  # timestamp_t: milliseconds since the epoch
        "severity_id": _severity(event),
        "metadata": _metadata(event, index, product_version),
        "src_endpoint": {"name": SANDBOX_ENDPOINT_NAME, "uid": event.session},
        **_decision(event),
        **fields,
    }
    record["unmapped"] = _unmapped(event, index)
    return record


def _metadata(event: Event, index: int | None, product_version: str) -> dict[str, Any]:
    product = dict(PRODUCT)
    if product_version:
        product["version"] = product_version
    meta: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": product,
        "correlation_uid": event.session,
        "profiles": ["security_control"],
    }
    if index is not None:
        meta["uid"] = f"{event.session}/{index}"
    return meta


def _severity(event: Event) -> int:
    if event.decision == DENY:
        return SEVERITY_MEDIUM
    if event.decision == WOULD_DENY:
        return SEVERITY_LOW
    return SEVERITY_INFORMATIONAL


def _decision(event: Event) -> dict[str, Any]:
    if event.decision is None:
        return {}
    allowed = event.decision in (ALLOW, WOULD_DENY)  # audit mode lets would-deny through
    out: dict[str, Any] = {
        "action_id": ACTION_ALLOWED if allowed else ACTION_DENIED,
        "action": "Allowed" if allowed else "Denied",
        "disposition_id": DISPOSITION_ALLOWED if allowed else DISPOSITION_BLOCKED,
        "disposition": "Allowed" if allowed else "Blocked",
        "status_id": STATUS_SUCCESS if allowed else STATUS_FAILURE,
        "status": "Success" if allowed else "Failure",
    }
    if event.reason:
        out["status_detail"] = event.reason
        out["message"] = f"{event.decision}: {event.reason}"
    return out


def _dst(event: Event) -> dict[str, Any]:
    dst: dict[str, Any] = {}
    if event.host:
        dst["hostname"] = event.host
    if event.address and "," not in event.address:
        dst["ip"] = event.address
    if event.port is not None:
        dst["port"] = event.port
    return dst


# The IP protocol of what a connection event's `protocol` names: the gateway's own
# (tls, http, https, dns-tcp, tcp...) run over TCP; the firewall's drop events
# (gateway/droplog.py) and DNS over UDP say so.
# (IANA numbers and keywords.)
_IP_PROTOCOLS = {
    "dns-udp": (PROTOCOL_UDP, "udp"),
    "udp": (PROTOCOL_UDP, "udp"),
    "icmp": (1, "icmp"),
    "gre": (47, "gre"),
    "esp": (50, "esp"),
    "ah": (51, "ah"),
    "icmpv6": (58, "ipv6-icmp"),
    "sctp": (132, "sctp"),
    "udplite": (136, "udplite"),
}


def _ip_protocol(protocol: str | None) -> tuple[int, str]:
    if protocol and protocol.startswith("ip proto "):  # a drop of an unnamed protocol
        number = protocol.removeprefix("ip proto ")
        if number.isdigit():
            return int(number), protocol
    return _IP_PROTOCOLS.get(protocol or "", (PROTOCOL_TCP, "tcp"))


def _connection_info(event: Event) -> dict[str, Any]:
    number, name = _ip_protocol(event.protocol)
    return {
        "protocol_num": number,
        "protocol_name": name,
        "direction_id": DIRECTION_OUTBOUND,
        "direction": "Outbound",
        **({"uid": f"{event.session}/{event.conn_id}"} if event.conn_id is not None else {}),
    }


def _connection(event: Event) -> tuple[int, int, str, dict[str, Any]]:
    refused = event.decision == DENY
    activity, name = (NET_REFUSE, "Refuse") if refused else (NET_OPEN, "Open")
    fields = {"dst_endpoint": _dst(event), "connection_info": _connection_info(event)}
    return NETWORK_ACTIVITY, activity, name, fields


def _connection_end(event: Event) -> tuple[int, int, str, dict[str, Any]]:
    up, down = event.bytes_up or 0, event.bytes_down or 0
    fields: dict[str, Any] = {
        "dst_endpoint": _dst(event),
        "connection_info": _connection_info(event),
        # bytes_out: from the sandbox (the source) towards the destination.
        "traffic": {"bytes_out": up, "bytes_in": down, "bytes": up + down},
    }
    if event.duration_ms is not None:
        fields["duration"] = int(event.duration_ms)
    if event.reason:
        fields["status_detail"] = event.reason
    return NETWORK_ACTIVITY, NET_CLOSE, "Close", fields


def _dns(event: Event) -> tuple[int, int, str, dict[str, Any]]:
    query: dict[str, Any] = {"hostname": event.host or ""}
    if event.qtype:
        query["type"] = event.qtype
    answered = event.decision != DENY and bool(event.address)
    fields: dict[str, Any] = {
        "query": query,
        "rcode_id": RCODE_NOERROR if answered else RCODE_NXDOMAIN,
        "rcode": "NoError" if answered else "NXDomain",
        "connection_info": _connection_info(event),
    }
    if answered and event.address:
        fields["answers"] = [
            {"rdata": a, "type": event.qtype or "", "class": "IN"} for a in event.address.split(",")
        ]
    return DNS_ACTIVITY, DNS_RESPONSE, "Response", fields


def _url(event: Event, path: str | None) -> dict[str, Any]:
    scheme = "https" if event.protocol == "https" or event.port == 443 else "http"
    url: dict[str, Any] = {"scheme": scheme}
    if event.host:
        url["hostname"] = event.host
    if event.port is not None:
        url["port"] = event.port
    if path:
        url["path"] = path
    if event.host:
        port = "" if event.port in (None, 80 if scheme == "http" else 443) else f":{event.port}"
        url["url_string"] = f"{scheme}://{event.host}{port}{path or '/'}"
    return url


def _http(event: Event) -> tuple[int, int, str, dict[str, Any]]:
    method = (event.method or "").upper()
    activity = HTTP_METHODS.get(method, OTHER)
    request: dict[str, Any] = {"url": _url(event, event.path)}
    if method:
        request["http_method"] = method
    fields: dict[str, Any] = {"http_request": request, "dst_endpoint": _dst(event)}
    if event.status is not None:
        fields["http_response"] = {"code": event.status}
        fields["http_status"] = event.status
    name = method.title() if method else "Other"
    return HTTP_ACTIVITY, activity, name, fields


def _package(event: Event) -> tuple[int, int, str, dict[str, Any]]:
    data = dict(event.data or {})
    url = data.get("url") if isinstance(data.get("url"), str) else None
    request: dict[str, Any] = {"http_method": "GET", "url": _url(event, None)}
    if url:
        request["url"]["url_string"] = url
    fields: dict[str, Any] = {"http_request": request, "dst_endpoint": _dst(event)}
    if isinstance(data.get("file"), str):
        fields["file"] = {"name": data["file"], "type_id": 1}  # 1: Regular File
    return HTTP_ACTIVITY, HTTP_METHODS["GET"], "Get", fields


_MAPPERS = {
    Kind.DNS: _dns,
    Kind.CONNECTION: _connection,
    Kind.CONNECTION_END: _connection_end,
    Kind.HTTP: _http,
    Kind.PACKAGE: _package,
}


def _unmapped(event: Event, index: int | None) -> dict[str, Any]:
    corridor: dict[str, Any] = {"session": event.session, "kind": event.kind.value}
    for name in ("decision", "reason", "rule", "protocol", "conn_id"):
        value = getattr(event, name)
        if value is not None:
            corridor[name] = value
    if index is not None:
        corridor["index"] = index
    if event.kind is Kind.PACKAGE and event.data:
        corridor["package"] = {
            k: event.data.get(k) for k in ("ecosystem", "name", "version") if k in event.data
        }
    return {"corridor": corridor}
