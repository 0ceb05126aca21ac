"""OCSF export: each record carries what its class requires.

The required attributes below are written from the OCSF 1.3.0 schema (schema.ocsf.io/1.3.0,
the classes network_activity, http_activity and dns_activity, the base event, and the
metadata, product and dns_query objects): every attribute marked "required", the classes'
"at least one of" constraints, and the enumerations of the ids corridor sets.
"""

from __future__ import annotations

from typing import Any

import pytest

from corridor.audit.events import Event, Kind
from corridor.audit.ocsf import OCSF_VERSION, to_ocsf

# Base event (all three classes extend it through `network`): requirement "required".
BASE_REQUIRED = (
    "activity_id", "category_uid", "class_uid", "metadata", "severity_id", "time", "type_uid",
)  # fmt: skip
METADATA_REQUIRED = ("product", "version")
PRODUCT_AT_LEAST_ONE = ("name", "uid")
CLASS_AT_LEAST_ONE = {
    4001: ("dst_endpoint", "src_endpoint"),  # network: at_least_one constraint
    4002: ("http_request", "http_response"),  # http_activity: at_least_one constraint
    4003: ("dst_endpoint", "src_endpoint"),  # inherited from network
}
CLASS_REQUIRED_OBJECT_FIELDS = {4003: {"query": ("hostname",)}}  # dns_query.hostname: required
ACTIVITY_IDS = {
    4001: {0, 1, 2, 3, 4, 5, 6, 99},  # Unknown, Open, Close, Reset, Fail, Refuse, Traffic, Other
    4002: {0, 1, 2, 3, 4, 5, 6, 7, 8, 99},  # Unknown, Connect ... Trace, Other
    4003: {0, 1, 2, 99},  # Unknown, Query, Response, Other
}
SEVERITY_IDS = {0, 1, 2, 3, 4, 5, 6, 99}
ACTION_IDS = {0, 1, 2, 99}
DISPOSITION_IDS = {0, 1, 2}  # Unknown, Allowed, Blocked (those corridor uses)

SID = "20261127T031500Z-3f9a2c"
T0 = 1795749300.123

EVENTS = {
    "dns-allowed": (Event(SID, Kind.DNS, T0, decision="allow", host="allowed.test", qtype="A",
                          address="198.18.0.5", protocol="dns-udp", reason="allowed by rule"),
                    4003, 2),
    "dns-refused": (Event(SID, Kind.DNS, T0, decision="deny", host="exfil.test", qtype="TXT",
                          protocol="dns-tcp", reason="no rule allows this host"), 4003, 2),
    "dns-unparseable": (Event(SID, Kind.DNS, T0, decision="deny", protocol="dns-udp",
                              reason="bad query: truncated"), 4003, 2),
    "connection-allowed": (Event(SID, Kind.CONNECTION, T0, decision="allow", host="allowed.test",
                                 port=443, address="192.0.2.10", protocol="tls", conn_id=4,
                                 reason="allowed by rule", rule="--allow allowed.test"),
                           4001, 1),
    "connection-refused": (Event(SID, Kind.CONNECTION, T0, decision="deny", host="denied.test",
                                 port=443, protocol="tls", conn_id=5,
                                 reason="no rule allows this host"), 4001, 5),
    "connection-would-deny": (Event(SID, Kind.CONNECTION, T0, decision="would-deny",
                                    host="audit.test", port=80, protocol="http", conn_id=6,
                                    reason="no rule allows this host"), 4001, 1),
    "connection-no-name": (Event(SID, Kind.CONNECTION, T0, decision="deny", address="192.0.2.9",
                                 port=22, protocol="tcp", conn_id=7,
                                 reason="no rule allows this address"), 4001, 5),
    "connection-end": (Event(SID, Kind.CONNECTION_END, T0, host="allowed.test", port=443,
                             address="192.0.2.10", protocol="tls", conn_id=4, bytes_up=517,
                             bytes_down=4096, duration_ms=12.5), 4001, 2),
    "http-get": (Event(SID, Kind.HTTP, T0, decision="allow", host="api.test", port=443,
                       method="GET", path="/v1/items", status=200, protocol="https", conn_id=8),
                 4002, 3),
    "http-patch": (Event(SID, Kind.HTTP, T0, decision="deny", host="api.test", port=80,
                         method="PATCH", path="/v1/items/1", protocol="http", conn_id=9,
                         reason="no rule allows this method"), 4002, 99),
    "package": (Event(SID, Kind.PACKAGE, T0, host="npm-mirror.test", port=443, conn_id=10,
                      data={"ecosystem": "npm", "name": "lodash", "version": "4.17.21",
                            "file": "lodash-4.17.21.tgz",
                            "url": "https://npm-mirror.test/lodash/-/lodash-4.17.21.tgz"}),
                4002, 3),
}  # fmt: skip


def missing_required(record: dict[str, Any]) -> list[str]:
    """Every violation of the class's requirements, as `path: problem`."""
    problems = [f"{name}: missing" for name in BASE_REQUIRED if record.get(name) is None]
    metadata = record.get("metadata") or {}
    problems += [f"metadata.{n}: missing" for n in METADATA_REQUIRED if not metadata.get(n)]
    product = metadata.get("product") or {}
    if not any(product.get(n) for n in PRODUCT_AT_LEAST_ONE):
        problems.append("metadata.product: needs name or uid")
    class_uid = record.get("class_uid")
    if class_uid not in CLASS_AT_LEAST_ONE:
        return [*problems, f"class_uid: {class_uid} is not a network class"]
    if not any(record.get(n) for n in CLASS_AT_LEAST_ONE[class_uid]):
        problems.append(f"needs one of {CLASS_AT_LEAST_ONE[class_uid]}")
    for obj, fields in CLASS_REQUIRED_OBJECT_FIELDS.get(class_uid, {}).items():
        problems += [
            f"{obj}.{f}: missing" for f in fields if (record.get(obj) or {}).get(f) is None
        ]
    if record.get("category_uid") != 4:
        problems.append("category_uid: not 4 (Network Activity)")
    if record.get("activity_id") not in ACTIVITY_IDS[class_uid]:
        problems.append(f"activity_id: {record.get('activity_id')} not in the class's enum")
    if record.get("type_uid") != class_uid * 100 + (record.get("activity_id") or 0):
        problems.append("type_uid: not class_uid * 100 + activity_id")
    if record.get("severity_id") not in SEVERITY_IDS:
        problems.append("severity_id: not in the enum")
    if type(record.get("time")) is not int:
        problems.append("time: not an integer timestamp_t (ms)")
    for name, allowed in (("action_id", ACTION_IDS), ("disposition_id", DISPOSITION_IDS)):
        if name in record and record[name] not in allowed:
            problems.append(f"{name}: not in the enum")
    return problems


@pytest.mark.parametrize(
    ("event", "class_uid", "activity_id"), list(EVENTS.values()), ids=list(EVENTS)
)
def test_records_carry_their_class_requirements(
    event: Event, class_uid: int, activity_id: int
) -> None:
    record = to_ocsf(event, index=3, product_version="0.1.0")
    assert record is not None
    assert missing_required(record) == []
    assert (record["class_uid"], record["activity_id"]) == (class_uid, activity_id)
    assert record["metadata"]["version"] == OCSF_VERSION == "1.3.0"
    assert record["metadata"]["uid"] == f"{SID}/3"
    assert record["time"] == 1795749300123
    assert record["unmapped"]["corridor"]["session"] == SID


def test_the_checker_catches_a_broken_record() -> None:
    record = to_ocsf(EVENTS["dns-allowed"][0])
    assert record is not None
    del record["metadata"]["product"]
    record["query"] = {}
    record["type_uid"] = 1
    assert missing_required(record) == [
        "metadata.product: missing",
        "metadata.product: needs name or uid",
        "query.hostname: missing",
        "type_uid: not class_uid * 100 + activity_id",
    ]


def test_decisions_map_to_action_and_disposition() -> None:
    allowed = to_ocsf(EVENTS["connection-allowed"][0])
    refused = to_ocsf(EVENTS["connection-refused"][0])
    audit = to_ocsf(EVENTS["connection-would-deny"][0])
    assert allowed and refused and audit
    assert (allowed["action_id"], allowed["disposition_id"], allowed["severity_id"]) == (1, 1, 1)
    assert (refused["action_id"], refused["disposition_id"], refused["severity_id"]) == (2, 2, 3)
    assert refused["status_detail"] == "no rule allows this host"
    assert (audit["action_id"], audit["severity_id"]) == (1, 2)  # let through, flagged


def test_details_per_class() -> None:
    dns = to_ocsf(EVENTS["dns-allowed"][0])
    refused = to_ocsf(EVENTS["dns-refused"][0])
    end = to_ocsf(EVENTS["connection-end"][0])
    http = to_ocsf(EVENTS["http-get"][0])
    patch = to_ocsf(EVENTS["http-patch"][0])
    assert dns and refused and end and http and patch
    assert dns["query"] == {"hostname": "allowed.test", "type": "A"}
    assert dns["answers"] == [{"rdata": "198.18.0.5", "type": "A", "class": "IN"}]
    assert (dns["rcode_id"], refused["rcode_id"], refused["rcode"]) == (0, 3, "NXDomain")
    assert end["traffic"] == {"bytes_out": 517, "bytes_in": 4096, "bytes": 4613}
    assert end["duration"] == 12
    assert http["http_request"] == {
        "http_method": "GET",
        "url": {
            "scheme": "https", "hostname": "api.test", "port": 443, "path": "/v1/items",
            "url_string": "https://api.test/v1/items",
        },
    }  # fmt: skip
    assert http["http_response"] == {"code": 200}
    assert (patch["activity_id"], patch["activity_name"]) == (99, "Patch")


@pytest.mark.parametrize(
    "kind",
    [Kind.SESSION_START, Kind.SESSION_END, Kind.CHECKPOINT, Kind.CREDENTIAL, Kind.EXFILTRATION],
)
def test_kinds_outside_the_network_classes_are_left_out(kind: Kind) -> None:
    assert to_ocsf(Event(SID, kind, T0)) is None


@pytest.mark.parametrize(
    ("protocol", "number", "name"),
    [
        ("tls", 6, "tcp"),
        ("http", 6, "tcp"),
        ("dns-udp", 17, "udp"),
        ("udp", 17, "udp"),  # a datagram the sandbox's firewall dropped (droplog.py)
        ("icmp", 1, "icmp"),
        ("icmpv6", 58, "ipv6-icmp"),
        ("sctp", 132, "sctp"),
        ("ip proto 253", 253, "ip proto 253"),
    ],
)
def test_connection_info_names_the_ip_protocol(protocol: str, number: int, name: str) -> None:
    event = Event(
        SID, Kind.CONNECTION, T0, decision="deny", reason="dropped", protocol=protocol,
        host=None, address="203.0.113.10", port=443,
    )  # fmt: skip
    record = to_ocsf(event)
    assert record is not None
    info = record["connection_info"]
    assert (info["protocol_num"], info["protocol_name"]) == (number, name)
