"""Command line for the audit trail: `verify`, `report`, `key show`, `suggest`, and the
body of `log` (`--format table|jsonl|ocsf`, `--follow`).

Every command first imports what killed corridor processes left in their spools (see
corridor/audit/store.py: recover), so what it reads is complete. Exit codes: 0 when all
holds, 1 when `verify` finds tampering or an unclosed session, 2 for usage errors.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from corridor.errors import UserError

if TYPE_CHECKING:  # imported lazily at run time: `corridor --help` stays fast
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from corridor.audit import Record, Verdict

EXIT_TAMPERED = 1
FOLLOW_POLL_S = 0.25  # a new commit shows up within a quarter second, at little cost
STATE_DIR_HELP = "Where the event log lives (default: $XDG_STATE_HOME/corridor)."
REPORT_HTML_MARK = "id='corridor-report-base64'>"
LOG_PIPE_WIDTH = 200  # piped `log` output keeps whole rows rather than folding at 80 columns


def state_dir_from(value: str | None) -> Path:
    """--state-dir, else $CORRIDOR_STATE_DIR, else the XDG default (as `corridor run`)."""
    from corridor.audit import default_state_dir

    if value:
        return Path(value)
    env = os.environ.get("CORRIDOR_STATE_DIR")
    return Path(env) if env else default_state_dir()


def prepare(state: Path) -> Path:
    """The database path, after importing the spools of killed writers (said on stderr)."""
    from corridor.audit import DB_FILENAME, load_or_create_signer, recover, spool_dir

    db = state / DB_FILENAME
    pending = spool_dir(db)
    if pending.is_dir() and any(pending.iterdir()):
        recovered = recover(db, load_or_create_signer(state))
        for r in recovered:
            damaged = f"; {r.damaged_bytes} unreadable bytes" if r.damaged_bytes else ""
            sealed = ", signed as recovered" if r.sealed else ""
            print(
                f"corridor: recovered session {r.session} of a killed corridor: "
                f"{r.imported} events imported{sealed}{damaged}",
                file=sys.stderr,
            )
    return db


def _session_or_last(db: Path, session: str | None) -> str:
    from corridor.audit import last_session

    found = session or last_session(db)
    if found is None:
        raise UserError(
            f"no sessions recorded yet in {db.parent}",
            hint="run a command with `corridor run ... -- COMMAND` first",
        )
    return found


def _records(db: Path, session: str) -> list[Record]:
    from corridor.audit import read_records

    records = read_records(db, session)
    if not records:
        raise UserError(
            f"--session {session}: no such session in {db.parent}",
            hint="`corridor log` without --session shows the last one",
        )
    return records


def _pinned_key(state: Path, key_file: Path | None) -> Ed25519PublicKey:
    from corridor.audit import load_public_key, load_signer

    if key_file is not None:
        return load_public_key(key_file)
    signer = load_signer(state)
    if signer is None:
        raise UserError(
            f"no signing key in {state}: nothing was signed here",
            hint="pass the signer's public key with --key FILE (from `corridor key show`)",
        )
    return signer.public


# -- verify -------------------------------------------------------------------------------


@click.command()
@click.option("--session", "session_id", default=None, help="Session id (default: the last one).")
@click.option("--all", "all_sessions", is_flag=True, help="Every recorded session.")
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The pinned public key (from `corridor key show`; default: this state's own key).",
)
@click.option(
    "--report",
    "report_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Verify a JSON (or HTML) report from `corridor report` instead of the local log.",
)
@click.option("--state-dir", default=None, help=STATE_DIR_HELP)
def verify(session_id, all_sessions, key_file, report_file, state_dir) -> None:
    """Recompute hash chains and signatures; name the first record that does not hold.

    Exits 0 when every session verifies, 1 when a record was altered, removed, inserted
    or reordered, a checkpoint does not verify, or a session is not closed.

    \b
    Examples:
      corridor verify --all --key team-pinned.pub
      corridor verify --report session.json --key team-pinned.pub
    """
    from corridor.audit import live_sessions, session_ids, verify_session

    if session_id and all_sessions:
        raise UserError("--session and --all exclude each other")
    state = state_dir_from(state_dir)
    if report_file is not None:
        if session_id or all_sessions:
            raise UserError("--report verifies the one session in the file: drop --session/--all")
        sys.exit(_verify_report(report_file, _pinned_key(state, key_file)))
    db = prepare(state)
    public = _pinned_key(state, key_file)
    ids = session_ids(db) if all_sessions else [_session_or_last(db, session_id)]
    running = live_sessions(db)
    verdicts = []
    for session in ids:
        verdict = verify_session(session, _records(db, session), public, running=session in running)
        verdicts.append(verdict)
        click.echo(_verdict_line(verdict))
    if len(verdicts) > 1:
        good = sum(v.ok for v in verdicts)
        click.echo(f"{len(verdicts)} sessions: {good} verified, {len(verdicts) - good} failed")
    sys.exit(0 if all(v.ok for v in verdicts) else EXIT_TAMPERED)


def _verdict_line(verdict: Verdict) -> str:
    return f"{verdict.session}  {verdict.status.value.upper():<10}  {verdict.message}"


def _verify_report(path: Path, public: Ed25519PublicKey) -> int:
    from corridor.audit import mismatched_sections, records_from_report, verify_session

    report = _read_report(path)
    session = report.get("session")
    try:
        records = records_from_report(report)
    except ValueError as exc:
        raise UserError(f"--report {path}: {exc}") from None
    if not isinstance(session, str):
        raise UserError(f"--report {path}: no session id in the report")
    verdict = verify_session(session, records, public)
    click.echo(_verdict_line(verdict))
    if not verdict.ok:
        return EXIT_TAMPERED
    differ = mismatched_sections(report, records)
    if differ:
        click.echo(
            f"{session}  TAMPERED    the report's {', '.join(differ)} do not match its "
            "signed records"
        )
        return EXIT_TAMPERED
    return 0


def _read_report(path: Path) -> dict:
    import base64

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--report {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if REPORT_HTML_MARK in text:  # an HTML report carries its JSON form
        start = text.index(REPORT_HTML_MARK) + len(REPORT_HTML_MARK)
        text = base64.b64decode(text[start : text.index("<", start)]).decode()
    try:
        report = json.loads(text)
    except ValueError as exc:
        raise UserError(
            f"--report {path}: not a JSON report: {exc}",
            hint="write one with `corridor report --format json SESSION > FILE`",
        ) from None
    if not isinstance(report, dict):
        raise UserError(f"--report {path}: not a JSON report")
    return report


# -- report -------------------------------------------------------------------------------


@click.command()
@click.argument("session_id", required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "html"]),
    default="text",
    show_default=True,
    help="json carries every record, for `corridor verify --report` elsewhere.",
)
@click.option(
    "--key",
    "key_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Public key to verify with (default: this state's own key).",
)
@click.option("--state-dir", default=None, help=STATE_DIR_HELP)
def report(session_id, fmt, key_file, state_dir) -> None:
    """The session report: who ran what, when, under which policy; hosts, refusals,
    packages, credentials, exfiltration flags and the signed checkpoint.

    SESSION defaults to the last one. The report is written even when the session does not
    verify; the exit code is then 1 and stderr says why.
    """
    from corridor.audit import (
        build_report,
        live_sessions,
        render_html,
        render_json,
        render_text,
        verify_session,
    )

    state = state_dir_from(state_dir)
    db = prepare(state)
    session = _session_or_last(db, session_id)
    records = _records(db, session)
    public = _pinned_key(state, key_file)
    verdict = verify_session(session, records, public, running=session in live_sessions(db))
    data = build_report(session, records, verdict)
    render = {"text": render_text, "json": render_json, "html": render_html}[fmt]
    sys.stdout.write(render(data))
    if not verdict.ok:  # the report is written, but nobody should take it at face value
        print(
            f"corridor: warning: {session} {verdict.status.value}: {verdict.message}",
            file=sys.stderr,
        )
        sys.exit(EXIT_TAMPERED)


# -- key ----------------------------------------------------------------------------------


@click.group()
def key() -> None:
    """The Ed25519 key that signs each session's checkpoint."""


@key.command("show")
@click.option("--state-dir", default=None, help=STATE_DIR_HELP)
def key_show(state_dir) -> None:
    """Print the public key and its fingerprint (created on first use).

    Save the output where the log cannot be changed (a team repository) and verify
    with `corridor verify --key FILE`; the lines starting with '#' are ignored there.
    """
    from corridor.audit import key_path, load_or_create_signer, public_pem

    state = state_dir_from(state_dir)
    signer = load_or_create_signer(state)
    click.echo("# corridor audit signing key (Ed25519)")
    click.echo(f"# fingerprint {signer.fingerprint}")
    click.echo(f"# private key {key_path(state)}")
    click.echo(public_pem(signer.public), nl=False)


# -- suggest ------------------------------------------------------------------------------


@click.command()
@click.option(
    "--since",
    default="14d",
    show_default=True,
    help="Sessions started within this long (s, m, h, d, w), e.g. 14d, 12h.",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A policy to review: which rules went unused, which refusals recur.",
)
@click.option("--state-dir", default=None, help=STATE_DIR_HELP)
def suggest(since, policy_file, state_dir) -> None:
    """Write the smallest policy that would have allowed what recorded sessions used.

    Audit-mode sessions (`mode: audit`) count: what they let through was used. Each rule
    is annotated with its use count and last use; with --policy, a review follows.
    """
    from corridor.audit import read_events, sessions
    from corridor.policy import load_policy
    from corridor.review.suggest import parse_since, render_yaml, review
    from corridor.review.suggest import suggest as build

    try:
        window = parse_since(since)
    except ValueError:
        raise UserError(
            f"--since {since!r}: not a duration", hint="a number and a unit: 90m, 12h, 14d, 2w"
        ) from None
    existing = load_policy(policy_file) if policy_file is not None else None
    db = prepare(state_dir_from(state_dir))
    cutoff = time.time() - window
    chosen = [s.id for s in sessions(db) if s.start_ts is not None and s.start_ts >= cutoff]
    events = [e for sid in chosen for e in read_events(db, sid)]
    rules = build(events, existing)
    found = None if existing is None else (str(policy_file), review(events, existing))
    sys.stdout.write(render_yaml(rules, sessions=chosen, since=cutoff, review_of=found))
    if not chosen:
        print(f"corridor: no session started in the last {since}", file=sys.stderr)


# -- log ----------------------------------------------------------------------------------


def show_log(
    session_id: str | None, blocked: bool, fmt: str, follow: bool, state_dir: str | None
) -> None:
    """The body of `corridor log`: table, JSON lines or OCSF; once, or following."""
    from rich.console import Console

    from corridor.audit import read_events, render_jsonl, render_table

    db = prepare(state_dir_from(state_dir))
    session = _session_or_last(db, session_id)
    if follow:
        _follow(db, session, fmt, blocked, sys.stdout)
        return
    if fmt == "ocsf":
        _write_ocsf(_records(db, session), blocked, sys.stdout)
        return
    events = read_events(db, session=session)
    if not events:
        raise UserError(
            f"--session {session}: no such session in {db.parent}",
            hint="`corridor log` without --session shows the last one",
        )
    if fmt == "jsonl":
        render_jsonl(events, sys.stdout, blocked_only=blocked)
    else:
        # Piped output keeps whole rows (a wide page) instead of folding at 80 columns.
        width = None if sys.stdout.isatty() else LOG_PIPE_WIDTH
        render_table(events, Console(width=width), blocked_only=blocked)


def _write_ocsf(records: list[Record], blocked: bool, out: TextIO) -> None:
    from corridor import __version__
    from corridor.audit import to_ocsf

    for record in records:
        if blocked and not record.event.blocked:
            continue
        mapped = to_ocsf(record.event, record.n, __version__)
        if mapped is not None:
            out.write(json.dumps(mapped) + "\n")


def _follow(db: Path, session: str, fmt: str, blocked: bool, out: TextIO) -> None:
    """Print the session's events as they are committed, until its end record arrives."""
    from corridor import __version__
    from corridor.audit import Kind, event_line, open_for_reading, records_after, to_ocsf

    last = 0
    with open_for_reading(db) as conn:
        while True:
            for record in records_after(conn, session, last):
                last = record.seq
                event = record.event
                if not blocked or event.blocked:
                    if fmt == "ocsf":
                        mapped = to_ocsf(event, record.n, __version__)
                        line = None if mapped is None else json.dumps(mapped)
                    elif fmt == "jsonl":
                        line = json.dumps({"n": record.n, **event.to_dict()})
                    else:
                        line = event_line(event)
                    if line is not None:
                        out.write(line + "\n")
                        out.flush()
                if event.kind is Kind.SESSION_END:
                    return
            time.sleep(FOLLOW_POLL_S)
