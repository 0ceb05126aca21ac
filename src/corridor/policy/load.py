"""Reading policies: YAML files (with `extends:`) and `--allow` command-line values.

Files are composed into YAML nodes first, so every value keeps the line and column it
came from; the plain data is then validated by the pydantic model and each error is
mapped back to the node it is about. Every failure is a `PolicyError` whose message
starts with `FILE:LINE:COLUMN: FIELD.PATH:` and which carries a hint.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from corridor.policy.flags import (
    PolicyError,
    canonical_record,
    parse_allow_flag,
    record_hash,
)
from corridor.policy.model import (
    POLICY_VERSION,
    Limits,
    Policy,
    Rule,
)
from corridor.policy.templates import is_template, resolve_template, template_names

MAX_POLICY_BYTES = 1024 * 1024  # policies are written by hand; a bigger file is a mistake
MAX_YAML_NODES = 100_000  # stops alias "billion laughs" expansion long before memory hurts
MAX_EXTENDS_DEPTH = 32  # far deeper than any sane layering; stops runaway chains early
TEMPLATE_SUFFIXES = (".yaml", ".yml")

_MERGE_TAG = "tag:yaml.org,2002:merge"
_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:seq", "tag:yaml.org,2002:map")
_TAG_HINT = "tags such as '!!python/...' are not read; write plain values"
_RULE_LISTS = ("allow", "deny")
# Keys a policy file may use at each level (origin is set by the loader, never read).
_FILE_FIELDS: dict[str, tuple[str, ...]] = {
    "policy": tuple(Policy.model_fields),
    "rule": tuple(name for name in Rule.model_fields if name != "origin"),
    "limits": tuple(Limits.model_fields),
}

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class _Problem:
    line: int
    column: int
    path: str
    message: str
    hint: str | None

    def text(self, display: str) -> str:
        where = f"{display}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


@dataclass
class _Document:
    """Plain data from one YAML file, plus where each value and each key was written."""

    display: str
    data: Any = None
    value_marks: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def mark(self, loc: Loc) -> tuple[int, int]:
        """Line and column of the value at `loc`, or of its nearest written ancestor."""
        while loc and loc not in self.value_marks:
            loc = loc[:-1]
        return self.value_marks.get(loc, (1, 1))

    def problem(
        self, loc: Loc, message: str, hint: str | None, at: tuple[int, int] | None = None
    ) -> _Problem:
        line, column = at or self.mark(loc)
        return _Problem(line, column, format_loc(loc), message, hint)

    def fail(
        self, loc: Loc, message: str, hint: str | None, at: tuple[int, int] | None = None
    ) -> PolicyError:
        return _error_for(self.display, [self.problem(loc, message, hint, at)])


def _error_for(display: str, problems: list[_Problem]) -> PolicyError:
    problems = sorted(problems, key=lambda p: (p.line, p.column))
    lines = [p.text(display) for p in problems]
    message = lines[0]
    if len(lines) > 1:
        message += f" (and {len(lines) - 1} more)"
    return PolicyError(message, problems[0].hint, lines)


def format_loc(loc: Loc) -> str:
    """("allow", 2, "ports", 0) -> "allow[2].ports[0]"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe(value: object) -> str:
    """How a wrong value is named in a message."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


# ------------------------------------------------------------------------------ YAML


_KEY_HINT = "keys are field names such as 'host' or 'ports'"


def _mark_of(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Composer:
    """Turns composed YAML nodes into plain data, recording marks, refusing duplicate keys."""

    def __init__(self, loader: yaml.SafeLoader, doc: _Document):
        self.loader = loader
        self.doc = doc
        self.count = 0
        self.active: set[int] = set()  # nodes being built: meeting one again is a loop

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.count += 1
        if self.count > MAX_YAML_NODES:
            raise self.doc.fail(loc, f"more than {MAX_YAML_NODES} values", "is an alias expanding?")
        self.doc.value_marks.setdefault(loc, _mark_of(node))
        if id(node) in self.active:
            raise self.doc.fail(loc, "an alias refers to itself", "remove the recursive alias")
        if isinstance(node, yaml.ScalarNode):
            return self.loader.construct_object(node, deep=True)  # refuses unknown tags
        if node.tag not in _PLAIN_COLLECTION_TAGS:
            # A tag on a list or mapping (!!set, !!omap, !!python/...) would be dropped
            # silently by building it as a plain list or dict: refuse it instead.
            raise self.doc.fail(loc, f"the tag {node.tag!r} is not supported", _TAG_HINT)
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
            return self._mapping(node, loc)
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            at = _mark_of(key_node)
            if key_node.tag == _MERGE_TAG:
                raise self.doc.fail(
                    loc, "YAML merge keys ('<<') are not supported", "write the keys out", at
                )
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.doc.fail(loc, "a key must be a plain name", _KEY_HINT, at)
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise self.doc.fail(loc, f"key {key!r} is not a name", _KEY_HINT, at)
            if key in out:
                first_line = self.doc.key_marks[(*loc, key)][0]
                raise self.doc.fail(
                    (*loc, key),
                    f"duplicate key (first written on line {first_line})",
                    "keep only one of them",
                    at,
                )
            self.doc.key_marks[(*loc, key)] = at
            out[key] = self.build(value_node, (*loc, key))
        return out


def _parse_yaml(text: str, display: str) -> _Document:
    doc = _Document(display)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            hint = f"start it with 'version: {POLICY_VERSION}'"
            raise doc.fail((), "the policy file is empty", hint)
        doc.data = _Composer(loader, doc).build(node, ())
    except yaml.YAMLError as e:
        raise _yaml_error(e, display) from None
    finally:
        loader.dispose()
    return doc


def _yaml_error(e: yaml.YAMLError, display: str) -> PolicyError:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    what = f"{context}, {problem}" if context else problem
    if isinstance(e, yaml.constructor.ConstructorError):
        hint = _TAG_HINT
    elif "\\t" in problem:  # PyYAML shows the tab escaped
        hint = "YAML indents with spaces, not tabs"
    else:
        hint = "check the indentation and quoting near that place"
    return PolicyError(f"{display}:{line}:{column}: not valid YAML: {what}", hint)


# ------------------------------------------------------------------------ validation


def _fields_for(parent: Loc) -> tuple[str, ...]:
    """The keys a file may use in the mapping at `parent`."""
    if parent == ():
        return _FILE_FIELDS["policy"]
    if len(parent) == 2 and parent[0] in _RULE_LISTS:
        return _FILE_FIELDS["rule"]
    if parent == ("limits",):
        return _FILE_FIELDS["limits"]
    return ()


def _unknown_field(doc: _Document, loc: Loc) -> _Problem:
    known = _fields_for(loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    if close:
        hint = f"did you mean {close[0]!r}?"
    else:
        hint = f"known fields here: {', '.join(known)}" if known else None
    return doc.problem(loc, "unknown field", hint, doc.key_marks.get(loc))


# Messages for pydantic's own error types; ours carry their text in ctx["text"].
_TYPE_MESSAGES: dict[str, tuple[str, str | None]] = {
    "string_type": ("expected text, got {value}", "put the value in quotes"),
    "int_type": ("expected a whole number, got {value}", "write the number without quotes"),
    "bool_type": ("expected true or false, got {value}", "write true or false"),
    "list_type": ("expected a list, got {value}", "write [a, b] or one '- item' per line"),
    "model_type": ("expected a mapping, got {value}", "write 'key: value' lines under it"),
    "dict_type": ("expected a mapping, got {value}", "write 'key: value' lines under it"),
    "literal_error": ("{value} is not one of {expected}", None),
    "missing": ("missing field", None),
}


def _explain(doc: _Document, error: Any) -> _Problem:
    ctx = error.get("ctx") or {}
    loc: Loc = (*error["loc"], *ctx.get("loc", ()))
    if error["type"] == "extra_forbidden":
        return _unknown_field(doc, loc)
    if "text" in ctx:
        return doc.problem(loc, ctx["text"], ctx.get("hint"))
    template, hint = _TYPE_MESSAGES.get(error["type"], (error["msg"], None))
    value = error.get("input")
    message = template.format(value=_describe(value), expected=ctx.get("expected", ""))
    if error["type"] == "string_type" and isinstance(value, bool):
        hint = "YAML reads yes/no/on/off as true/false: put the value in quotes"
    return doc.problem(loc, message, hint)


def _validate(doc: _Document) -> Policy:
    """Validate one file's data into a Policy whose rules know their origin."""
    data = doc.data
    if not isinstance(data, dict):
        raise doc.fail(
            (),
            f"the top level must be a mapping of fields, not {_describe(data)}",
            f"a policy starts with 'version: {POLICY_VERSION}' and has allow/deny lists",
        )
    if "version" not in data:
        raise doc.fail(
            (), "missing field 'version'", f"start the file with 'version: {POLICY_VERSION}'"
        )
    problems: list[_Problem] = []
    for name in _RULE_LISTS:
        rules = data.get(name)
        for index, rule in enumerate(rules if isinstance(rules, list) else []):
            if isinstance(rule, dict) and "origin" in rule:
                problems.append(_unknown_field(doc, (name, index, "origin")))
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        problems += [_explain(doc, error) for error in e.errors()]
        # A wrong version means a different language: its other complaints are noise.
        version_problems = [p for p in problems if p.path == "version"]
        raise _error_for(doc.display, version_problems or problems) from None
    if problems:
        raise _error_for(doc.display, problems)
    return _with_origins(doc, policy)


def _with_origins(doc: _Document, policy: Policy) -> Policy:
    update: dict[str, list[Rule]] = {}
    for name in _RULE_LISTS:
        rules = getattr(policy, name)
        update[name] = [
            rule.model_copy(
                update={"origin": f"{doc.display}:{doc.mark((name, i))[0]} {name}[{i}]"}
            )
            for i, rule in enumerate(rules)
        ]
    return policy.model_copy(update=update)


# --------------------------------------------------------------------------- loading


def load_policy(path: Path, notes: list[str] | None = None) -> Policy:
    """Read a policy file and the files it extends; raise PolicyError on any problem.

    Entries of `extends:` are built-in template names (a bare name that is a template
    always means the template; write ./NAME for a file of that name) or files relative
    to the file naming them. They are merged in order before the file itself: allow and
    deny lists are concatenated, and `mode` and each limit come from the last file that
    sets them. What template discovery noted is appended to `notes` when given.
    """
    path = Path(path)
    return _load(path, str(path), (), [] if notes is None else notes)


def resolve_policy(
    value: str, notes: list[str] | None = None, state_dir: Path | None = None
) -> Policy:
    """The policy `--policy NAME|FILE` names: a built-in template, or a policy file.

    A template name wins over a file of the same name in the current directory (a
    repository cannot replace a template the user asked for); ./NAME reads the file.
    With `state_dir`, the answers of the tools a template's discovery asks are kept there
    between runs (see corridor.policy.tool_cache).
    """
    if is_template(value):
        resolved = resolve_template(value, state_dir=state_dir)
        if notes is not None:
            notes += resolved.notes
        return resolved.policy.model_copy(update={"extends": [value]})
    path = Path(value)
    if not path.exists() and "/" not in value and not value.endswith(TEMPLATE_SUFFIXES):
        raise PolicyError(
            f"{value}: no such template or file", _template_hint(value, "give a file path")
        )
    return load_policy(path, notes)


def _template_hint(name: str, otherwise: str) -> str:
    close = difflib.get_close_matches(name, template_names(), n=1)
    if close:
        return f"did you mean the template {close[0]!r}? (`corridor policy list` shows all)"
    return f"templates: {', '.join(template_names())}; or {otherwise}"


def _load(
    path: Path, display: str, chain: tuple[tuple[Path, str], ...], notes: list[str]
) -> Policy:
    doc = _parse_yaml(_read(path, display), display)
    own = _validate(doc)
    here = (path.resolve(), display)
    layers: list[Policy] = []
    for index, entry in enumerate(own.extends):
        if is_template(entry):
            template = resolve_template(entry)
            notes += [note for note in template.notes if note not in notes]
            layers.append(template.policy)
            continue
        child, child_display = _extends_target(doc, index, entry, path, display)
        seen = [resolved for resolved, _ in (*chain, here)]
        if (resolved := child.resolve()) in seen:
            names = [shown for _, shown in (*chain, here)][seen.index(resolved) :]
            raise doc.fail(
                ("extends", index),
                f"extends cycle: {' -> '.join([*names, child_display])}",
                "remove one of the extends entries that form the cycle",
            )
        if len(chain) + 1 >= MAX_EXTENDS_DEPTH:
            raise doc.fail(
                ("extends", index), f"extends nested deeper than {MAX_EXTENDS_DEPTH}", None
            )
        layers.append(_load(child, child_display, (*chain, here), notes))
    merged = merge_policies([*layers, own])
    return merged.model_copy(update={"extends": list(own.extends)})


def _extends_target(
    doc: _Document, index: int, entry: str, path: Path, display: str
) -> tuple[Path, str]:
    child = path.parent / entry
    child_display = os.path.normpath(os.path.join(os.path.dirname(display), entry))
    if child.is_file():
        return child, child_display
    loc = ("extends", index)
    if "/" not in entry and not entry.endswith(TEMPLATE_SUFFIXES):
        raise doc.fail(
            loc,
            f"unknown template {entry!r}",
            _template_hint(entry, "to extend a file, give its path ending in .yaml"),
        )
    if child.exists():
        raise doc.fail(loc, f"{child_display} is not a file", None)
    raise doc.fail(
        loc, f"no such file: {child_display}", "extends paths are relative to the file naming them"
    )


def _read(path: Path, display: str) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_POLICY_BYTES + 1)
    except OSError as e:
        raise PolicyError(
            f"{display}: cannot read the policy file: {e.strerror or e}",
            "check the path and that you may read it",
        ) from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(
            f"{display}: larger than {MAX_POLICY_BYTES} bytes", "is this a policy file?"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(
            f"{display}: not UTF-8 text (byte {e.start})", "save it as UTF-8"
        ) from None


def merge_policies(layers: Sequence[Policy]) -> Policy:
    """Merge policies in order: rules concatenated; mode and each limit from the last setter."""
    allow: list[Rule] = []
    deny: list[Rule] = []
    settings: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    credentials: list[Any] = []
    for layer in layers:
        allow += layer.allow
        deny += layer.deny
        credentials += layer.credentials or ()
        if "mode" in layer.model_fields_set:
            settings["mode"] = layer.mode
        for name in layer.limits.model_fields_set:
            limits[name] = getattr(layer.limits, name)
    if limits:
        settings["limits"] = Limits(**limits)
    if credentials:
        settings["credentials"] = credentials
    return Policy(allow=allow, deny=deny, **settings)


# ---------------------------------------------------------------------- --allow flags


def rule_from_allow_flag(value: str) -> Rule:
    """Turn one `--allow` value into an allow rule whose origin is "--allow VALUE"
    (read by `corridor.policy.flags.parse_allow_flag`, which says what is accepted)."""
    rule = parse_allow_flag(value)
    ports = None if rule.ports is None else list(rule.ports)
    return Rule(host=rule.host, cidr=rule.cidr, ports=ports, origin=rule.origin)


def policy_from_flags(allow: list[str], base: Policy | None) -> Policy:
    """Add one allow rule per `--allow` value to `base` (or to an empty enforce policy).

    With no base and no flags the result allows nothing.
    """
    policy = base if base is not None else Policy()
    rules = [rule_from_allow_flag(value) for value in allow]
    return policy.model_copy(update={"allow": [*policy.allow, *rules]})


# -------------------------------------------------------------------------- logging


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The policy as JSON-ready data, rule origins included, for the session event."""
    return policy.model_dump(mode="json", exclude_none=True, by_alias=True)


def canonical_policy(policy: Policy) -> dict[str, Any]:
    """What `policy_hash` covers: the rules' meaning, not where they were written
    (`corridor.policy.flags.canonical_record`)."""
    return canonical_record(policy_to_dict(policy))


def policy_hash(policy: Policy) -> str:
    """SHA-256 (hex) of the canonical JSON form of the policy."""
    return record_hash(policy_to_dict(policy))
