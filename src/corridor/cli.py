"""Command line: `corridor run`, `corridor log`.

User mistakes (bad flags, bad policy files, missing tools) end here as one clear
line on stderr and exit 2; nothing below prints tracebacks for them.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from corridor import __version__
from corridor.errors import EXIT_USAGE, UserError

if TYPE_CHECKING:
    from corridor.gateway.process import GatewayProcess

# A gateway process started before the command line was parsed (corridor.start), for `run`.
_EARLY: dict[str, GatewayProcess] = {}
STATE_DIR_HELP = "Where the event log lives (default: $XDG_STATE_HOME/corridor)."
# Commands whose module is imported only when they run (or `--help` lists them): `run` and
# `--version` do not pay for the audit and policy commands' imports.
LAZY_COMMANDS = {
    "policy": "corridor.cli_policy:policy",
    "verify": "corridor.cli_audit:verify",
    "report": "corridor.cli_audit:report",
    "key": "corridor.cli_audit:key",
    "suggest": "corridor.cli_audit:suggest",
}
# The interpreter's exit status when flushing stdout or stderr fails at exit (Py_Exit).
EXIT_FLUSH_FAILED = 120


class LazyGroup(click.Group):
    """A click group that imports a LAZY_COMMANDS command when it is first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            module, _, name = LAZY_COMMANDS[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), name)
            self.add_command(command, cmd_name)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    from corridor.gateway.process import GatewayProcess

    # First thing (or before click was even imported: corridor.start): the gateway's
    # interpreter loads its modules (~90 ms) while this one loads the policy and starts
    # the sandbox; session.run configures it.
    gateway = _EARLY.pop("gateway", None) or GatewayProcess.spawn()
    try:
        from corridor.cli_audit import state_dir_from
        from corridor.session import RunOptions, print_summary
        from corridor.session import run as run_session

        state = state_dir_from(state_dir)
        policy = _run_policy(policy_file, list(allow), mode, state)
        if upstream_ca is not None:
            _check_ca(upstream_ca)
        unsafe = _unsafe_ranges(unsafe_allow_private)
        opts = RunOptions(
            command=list(command),
            policy=policy,
            workspace=workspace or Path.cwd(),
            state_dir=state,
            quiet=quiet,
            upstream_ca=upstream_ca,
            pass_env=list(pass_env),
            unsafe_allow_private=unsafe,
        )
    except BaseException:
        # Nothing to serve: it need not finish loading to be ended.
        gateway.kill()
        gateway.wait(deadline=time.monotonic())
        gateway.close()
        raise
    result = run_session(opts, gateway)
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


def _run_policy(policy_file: str | None, allow: list[str], mode: str | None, state: Path):
    """The policy of a run: --allow values alone are read straight into the compiled form
    (no policy model to load); a template or file goes through the model."""
    if policy_file is None:
        from corridor.policy.flags import policy_from_allow_flags

        return policy_from_allow_flags(allow, mode)
    from corridor.policy import policy_from_flags, resolve_policy

    # Discovery keeps tool answers in the state directory (corridor.policy.tool_cache).
    policy = policy_from_flags(allow, resolve_policy(policy_file, state_dir=state))
    if mode is not None:
        policy = policy.model_copy(update={"mode": mode})
    return policy


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


def main(gateway: GatewayProcess | None = None) -> NoReturn:
    """The `corridor` command: run the CLI, then end the process without tearing the
    interpreter down (see `leave`). `gateway`: a gateway process `corridor.start` started
    for `corridor run` before this module was imported; ended here if `run` did not
    take it (--help, a usage error)."""
    if gateway is not None:
        _EARLY["gateway"] = gateway
    try:
        dispatch()
        status = 0
    except SystemExit as e:
        status = exit_status(e.code)
    finally:
        unused = _EARLY.pop("gateway", None)
        if unused is not None:
            unused.kill()
            unused.wait(deadline=time.monotonic())
            unused.close()
    leave(status)


def dispatch() -> None:
    """Run the command line; ends with SystemExit (the status) when it does not return."""
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


def exit_status(code: object) -> int:
    """The process status for `sys.exit(code)`, as the interpreter computes it: None is 0,
    an int is itself, anything else is printed on stderr and gives 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def leave(status: int) -> NoReturn:
    """Exit with `status` the way the interpreter would, minus its teardown.

    Tearing down the ~1,000 modules a run imports (pydantic's schemas, cryptography...)
    takes ~35 ms after the command has already ended. The parts of an exit that matter
    still happen: the atexit handlers run, then stdout and stderr are flushed. Only when
    another thread still runs (its end would be waited for) does the normal exit follow.
    """
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        sys.exit(status)
    atexit._run_exitfuncs()  # what the interpreter runs at exit, in the same order
    for stream in (sys.stdout, sys.stderr):
        if stream is None or stream.closed:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # e.g. a closed pipe: the interpreter's status then
            status = EXIT_FLUSH_FAILED
    os._exit(status)
