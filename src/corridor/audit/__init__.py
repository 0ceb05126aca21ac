"""Audit: the event schema, the hash-chained store, signed checkpoints, verification,
reports, package recognition and exports.

Names are imported from their modules on first use (PEP 562): `corridor run` needs the
store and the events, not the renderers (rich), reports or exporters, and every
millisecond of imports is start-up time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from corridor.lazy import lazy_getattr

# name -> the module of corridor.audit that defines it
_WHERE = {
    "EncodingError": "chain",
    "Record": "chain",
    "canonical": "chain",
    "genesis": "chain",
    "link": "chain",
    "ALLOW": "events",
    "BLOCKED_DECISIONS": "events",
    "DECISIONS": "events",
    "DENY": "events",
    "WOULD_DENY": "events",
    "Event": "events",
    "Kind": "events",
    "format_command": "events",
    "Signer": "keys",
    "SigningKeyError": "keys",
    "fingerprint": "keys",
    "key_path": "keys",
    "load_or_create_signer": "keys",
    "load_public_key": "keys",
    "load_signer": "keys",
    "public_pem": "keys",
    "to_ocsf": "ocsf",
    "Package": "packages",
    "package_event": "packages",
    "Row": "rows",
    "connection_rows": "rows",
    "event_line": "render",
    "human_bytes": "render",
    "human_duration": "render",
    "render_jsonl": "render",
    "render_table": "render",
    "summary_line": "rows",
    "build_report": "report",
    "mismatched_sections": "report",
    "records_from_report": "report",
    "render_html": "report",
    "render_json": "report",
    "render_text": "report",
    "spool_dir": "spool",
    "DB_FILENAME": "store",
    "EventWriter": "store",
    "Recovered": "store",
    "SessionSummary": "store",
    "StoreError": "store",
    "default_db_path": "store",
    "default_state_dir": "store",
    "last_session": "store",
    "live_sessions": "store",
    "new_session_id": "store",
    "open_for_reading": "store",
    "read_events": "store",
    "read_records": "store",
    "records_after": "store",
    "recover": "store",
    "session_ids": "store",
    "sessions": "store",
    "Problem": "verify",
    "Status": "verify",
    "Verdict": "verify",
    "verify_session": "verify",
}


__getattr__ = lazy_getattr(__name__, _WHERE)


if TYPE_CHECKING:  # for type checkers and editors: the same names, eagerly
    from corridor.audit.chain import EncodingError, Record, canonical, genesis, link
    from corridor.audit.events import (
        ALLOW,
        BLOCKED_DECISIONS,
        DECISIONS,
        DENY,
        WOULD_DENY,
        Event,
        Kind,
        format_command,
    )
    from corridor.audit.keys import (
        Signer,
        SigningKeyError,
        fingerprint,
        key_path,
        load_or_create_signer,
        load_public_key,
        load_signer,
        public_pem,
    )
    from corridor.audit.ocsf import to_ocsf
    from corridor.audit.packages import Package, package_event
    from corridor.audit.render import (
        event_line,
        human_bytes,
        human_duration,
        render_jsonl,
        render_table,
    )
    from corridor.audit.report import (
        build_report,
        mismatched_sections,
        records_from_report,
        render_html,
        render_json,
        render_text,
    )
    from corridor.audit.rows import Row, connection_rows, summary_line
    from corridor.audit.spool import spool_dir
    from corridor.audit.store import (
        DB_FILENAME,
        EventWriter,
        Recovered,
        SessionSummary,
        StoreError,
        default_db_path,
        default_state_dir,
        last_session,
        live_sessions,
        new_session_id,
        open_for_reading,
        read_events,
        read_records,
        records_after,
        recover,
        session_ids,
        sessions,
    )
    from corridor.audit.verify import Problem, Status, Verdict, verify_session

__all__ = [
    "ALLOW",
    "BLOCKED_DECISIONS",
    "DB_FILENAME",
    "DECISIONS",
    "DENY",
    "WOULD_DENY",
    "EncodingError",
    "Event",
    "EventWriter",
    "Kind",
    "Package",
    "Problem",
    "Record",
    "Recovered",
    "Row",
    "SessionSummary",
    "Signer",
    "SigningKeyError",
    "Status",
    "StoreError",
    "Verdict",
    "build_report",
    "canonical",
    "connection_rows",
    "default_db_path",
    "default_state_dir",
    "event_line",
    "fingerprint",
    "format_command",
    "genesis",
    "human_bytes",
    "human_duration",
    "key_path",
    "last_session",
    "link",
    "live_sessions",
    "load_or_create_signer",
    "load_public_key",
    "load_signer",
    "mismatched_sections",
    "new_session_id",
    "open_for_reading",
    "package_event",
    "public_pem",
    "read_events",
    "read_records",
    "records_after",
    "records_from_report",
    "recover",
    "render_html",
    "render_json",
    "render_jsonl",
    "render_table",
    "render_text",
    "session_ids",
    "sessions",
    "spool_dir",
    "summary_line",
    "to_ocsf",
    "verify_session",
]
