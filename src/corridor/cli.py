"""Command line: `corridor run`, `corridor log`.

User mistakes (bad flags, bad policy files, missing tools) end here as one clear
line on stderr and exit 2; nothing below prints tracebacks for them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from corridor import __version__
from corridor.errors import EXIT_USAGE, UserError

STATE_DIR_HELP = "Where the event log lives (default: $XDG_STATE_HOME/corridor)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="corridor")
def cli() -> None:
    """Run a coding agent with contained network access.

    The command runs in a throwaway sandbox whose only way out is corridor's gateway;
    every DNS query and connection is decided by the policy and recorded.
    """


@cli.command(context_settings={"ignore_unknown_options": False, "allow_interspersed_args": False})
@click.option(
    "--allow",
    "allow",
    multiple=True,
    metavar="HOST[:PORT]",
    help="Allow a host (exact, or *.domain for subdomains), optionally one port. "
    "Repeatable. Default ports: 443 and 80.",
)
@click.option(
    "--policy",
    "policy_file",
    metavar="NAME|FILE",
    help="A built-in template (see `corridor policy list`) or a policy file (YAML).",
)
@click.option(
    "--mode",
    type=click.Choice(["enforce", "audit"]),
    default=None,
    help="Override the policy's mode; audit lets through what enforce would deny and "
    "records it as would-deny.",
)
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory the command may write to (default: the current directory).",
)
@click.option(
    "--env",
    "pass_env",
    multiple=True,
    metavar="NAME",
    help="Pass this environment variable into the sandbox (others are dropped).",
)
@click.option(
    "--upstream-ca",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Extra CA certificates (PEM) the gateway trusts upstream, e.g. a corporate CA.",
)
@click.option(
    "--unsafe-allow-private",
    "unsafe_allow_private",
    multiple=True,
    metavar="CIDR",
    help="UNSAFE: let allowed host names resolve to addresses in CIDR although it is an "
    "internal range (private, loopback, link-local, ...). Names only: connecting to those "
    "addresses by number still needs a cidr rule. Repeatable.",
)
@click.option("--state-dir", default=None, help=STATE_DIR_HELP)
@click.option("-q", "--quiet", is_flag=True, help="No summary line at the end.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    allow,
    policy_file,
    mode,
    workspace,
    pass_env,
    upstream_ca,
    unsafe_allow_private,
    state_dir,
    quiet,
    command,
) -> None:
    """Run COMMAND in a sandbox whose network goes only through corridor's gateway.

    Exits with the command's exit code (128+N when it died of signal N).

    \b
    Example:
      corridor run --allow api.example.com -- curl -sSf https://api.example.com/
    """
    from corridor.policy import policy_from_flags, resolve_policy
    from corridor.session import RunOptions, print_summary
    from corridor.session import run as run_session

    base = resolve_policy(policy_file) if policy_file else None
    policy = policy_from_flags(list(allow), base)
    if mode is not None:
        policy = policy.model_copy(update={"mode": mode})
    if upstream_ca is not None:
        _check_ca(upstream_ca)
    unsafe = _unsafe_ranges(unsafe_allow_private)
    opts = RunOptions(
        command=list(command),
        policy=policy,
        workspace=workspace or Path.cwd(),
        state_dir=state_dir_from(state_dir),
        quiet=quiet,
        upstream_ca=upstream_ca,
        pass_env=list(pass_env),
        unsafe_allow_private=unsafe,
    )
    result = run_session(opts)
    if not quiet:
        from corridor.audit import read_events, summary_line

        events = read_events(opts.state_dir / "events.db", session=result.session)
        print_summary(summary_line(events))
    sys.exit(result.exit_code)


@cli.command()
@click.option("--session", "session_id", default=None, help="Session id (default: the last one).")
@click.option("--blocked", is_flag=True, help="Only what was refused.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "jsonl", "ocsf"]),
    default=None,
    help="table (default), jsonl (one JSON object per line) or ocsf (OCSF 1.3 records).",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format jsonl.")
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing the session's events as they happen."
)
@click.option("--state-dir", default=None, help=STATE_DIR_HELP)
def log(session_id, blocked, fmt, as_json, follow, state_dir) -> None:
    """Show a session's DNS queries and connections, with decisions and reasons.

    --follow prints events as they are recorded until the session ends (or Ctrl-C).
    """
    from corridor.cli_audit import show_log

    if as_json and fmt not in (None, "jsonl"):
        raise UserError(f"--json and --format {fmt} exclude each other")
    fmt = "jsonl" if as_json else fmt or "table"
    show_log(session_id, blocked, fmt, follow, state_dir)  # None: the default state dir


def _unsafe_ranges(values: tuple[str, ...]) -> tuple:
    from corridor.gateway.addresses import UnsafeRangeError, parse_unsafe_range

    try:
        return tuple(parse_unsafe_range(v) for v in values)
    except UnsafeRangeError as e:
        raise UserError(e.message, hint=e.hint) from None


def _check_ca(path: Path) -> None:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"--upstream-ca {path}: {e.strerror}") from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise UserError(
            f"--upstream-ca {path}: no PEM certificate in the file",
            hint="pass a PEM file with one or more CERTIFICATE blocks",
        )


def main() -> None:
    try:
        cli.main(prog_name="corridor", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        print(f"corridor: error: {e.format_message()}{hint}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except click.ClickException as e:
        print(f"corridor: error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code)
    except UserError as e:
        print(f"corridor: error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


from corridor.cli_policy import policy as _policy_group  # noqa: E402  (the `policy` group)

cli.add_command(_policy_group)
from corridor.cli_audit import key, report, state_dir_from, suggest, verify  # noqa: E402

for _command in (verify, report, key, suggest):
    cli.add_command(_command)
