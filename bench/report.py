"""From bench/results.json to bench/results.md (tables with ratios) and bench/results.png.

    python -m bench.report [RESULTS_JSON]

Standard library only, except the chart (matplotlib, from the bench's tools venv; without
it the chart is skipped and the Markdown says so). Every figure is the median over the
rounds of the run; ratios are to direct (the physical limit) and to each peer.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import IDLE_TUNNELS, REPO_ROOT, RESULTS_JSON, RESULTS_MD, RESULTS_PNG

MB = 1e6
README = REPO_ROOT / "README.md"
# The README's benchmark table sits between these lines; `make bench` rewrites it.
README_START = "<!-- bench:start (written by bench/report.py) -->"
README_END = "<!-- bench:end -->"
NOT_YET = "not available yet"
# The goals. Each is checked against the corridor figure it names.
GOAL_PASS_RATIO = 0.95  # HTTPS passthrough conn/s at C=64, share of direct
GOAL_P50_EXTRA_MS = 0.10  # HTTPS passthrough p50 at C=1 over direct
GOAL_HTTP_VS_TINYPROXY = 2.0  # plain HTTP conn/s at C=64
GOAL_TUNNEL_RATIO = 0.80  # single-stream MB/s, share of direct
GOAL_CPU_PASS_US = 200.0
GOAL_CPU_INSPECT_US = 600.0
GOAL_INSPECT_VS_MITM = 10.0  # inspected conn/s at C=64
GOAL_INSPECT_MB_VS_MITM = 4.0  # inspected single-stream MB/s
GOAL_IDLE_RSS_MB = 30.0
GOAL_FLAT_GROWTH = 1.25  # "flat after load": RSS after load within 25% of RSS at start
GOAL_START_MS = 100.0
GOAL_PER_REQUEST_MS = 0.5
GOAL_DOWNLOAD_VS_SRT = 4.0
GOAL_AUDIT_EVENTS_S = 50_000

# Columns of the main table: (heading, target, path) per measure.
PEER_COLUMNS = ("direct", "squid", "tinyproxy", "mitmproxy", "corridor proxy", "corridor transp.")


def column_keys(measure: str) -> list[tuple[str, str] | None]:
    """(target, path) for each PEER_COLUMNS heading, for one measure."""
    proxy_path = "absolute" if measure == "http" else "connect"
    return [
        ("direct", "direct"),
        ("squid", proxy_path),
        ("tinyproxy", proxy_path),
        ("mitmproxy", proxy_path),
        ("corridor", proxy_path),
        ("corridor", "transparent"),
    ]


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# ---- summaries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnSummary:
    rounds: int
    conn_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    cpu_us: float | None  # proxy CPU per connection
    sys_share: float | None  # the part of it spent in the kernel
    client_cores: float | None
    others_cores: float | None  # CPU other processes of the machine used meanwhile
    attempts: int
    errors: int
    failed: list[str]


def summarize_cells(cells: list[dict]) -> dict[tuple[str, str, str, int], ConnSummary]:
    """Medians over rounds, keyed by (measure, target, path, concurrency)."""
    groups: dict[tuple[str, str, str, int], list[dict]] = defaultdict(list)
    for c in cells:
        groups[(c["measure"], c["target"], c["path"], c["conc"])].append(c)
    out = {}
    for key, rows in groups.items():
        ok = [r for r in rows if "failed" not in r]
        out[key] = ConnSummary(
            rounds=len(ok),
            conn_per_s=median(r.get("conn_per_s") for r in ok),
            p50_ms=median(r.get("p50_ms") for r in ok),
            p99_ms=median(r.get("p99_ms") for r in ok),
            cpu_us=median(r.get("proxy_cpu_us_per_conn") for r in ok),
            sys_share=median(
                r["proxy_sys_cpu_s"] / r["proxy_cpu_s"]
                for r in ok
                if r.get("proxy_cpu_s") and r.get("proxy_sys_cpu_s") is not None
            ),
            client_cores=median(r.get("client_cores") for r in ok),
            others_cores=median(r.get("others_cores") for r in ok),
            attempts=sum(r.get("attempts", 1) for r in rows),
            errors=sum(r.get("errors", 0) for r in ok),
            failed=[r["failed"] for r in rows if "failed" in r],
        )
    return out


@dataclass(frozen=True)
class BulkSummary:
    rounds: int
    mb_per_s: float | None
    low: float | None
    high: float | None
    complete: bool
    cpu_s: float | None


def summarize_bulk(rows: list[dict]) -> dict[tuple[str, str, str], BulkSummary]:
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["measure"], r["target"], r["path"])].append(r)
    out = {}
    for key, rs in groups.items():
        ok = [r for r in rs if "failed" not in r]
        speeds = [r["mb_per_s"] for r in ok]
        out[key] = BulkSummary(
            rounds=len(ok),
            mb_per_s=median(speeds),
            low=min(speeds, default=None),
            high=max(speeds, default=None),
            complete=bool(ok) and all(r.get("complete") for r in ok),
            cpu_s=median(r.get("proxy_cpu_s") for r in ok),
        )
    return out


# ---- formatting ---------------------------------------------------------------------------


def fmt_int(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def fmt_pct(part: float | None, whole: float | None) -> str:
    if part is None or not whole:
        return ""
    return f" ({part / whole:.0%})"


def fmt_delta_ms(v: float | None, base: float | None) -> str:
    if v is None:
        return "-"
    if base is None:
        return fmt_ms(v)
    return f"{v - base:+.2f} ms"


def fmt_mb(v: float | None) -> str:
    return "-" if v is None else f"{v / MB:,.1f} MB"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "-"
    return f"{a / b:.2f}x"


def fmt_cpu(s: ConnSummary) -> str:
    if s.cpu_us is None:
        return "-"
    kernel = "" if s.sys_share is None else f" ({s.sys_share:.0%} kernel)"
    return f"{s.cpu_us:,.0f} us{kernel}"


def _rounds(n: int | None) -> str:
    return "one run" if n == 1 else f"median of {n if n is not None else '?'} rounds"


def _cell_text(text: str) -> str:
    # Error messages carry newlines and pipes; either would break the Markdown table.
    return " ".join(text.split()).replace("|", "\\|")


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_cell_text(c) for c in r) + " |" for r in rows]
    return out


def met(ok: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "n/a"}[ok]


# ---- the report ---------------------------------------------------------------------------


class Report:
    def __init__(self, results: dict[str, Any]) -> None:
        self.r = results
        self.meta = results.get("meta", {})
        self.conns = summarize_cells(results.get("cells", []))
        self.bulk = summarize_bulk(results.get("bulk", []))

    # lookups
    def c(self, measure: str, target: str, path: str, conc: int) -> ConnSummary | None:
        return self.conns.get((measure, target, path, conc))

    def b(self, measure: str, target: str, path: str) -> BulkSummary | None:
        return self.bulk.get((measure, target, path))

    def _conn_row(self, label: str, measure: str, conc: int, what: str) -> list[str]:
        """One row of the main table: conn/s (share of direct), or latency (delta)."""
        keys = column_keys(measure)
        direct = self.c(measure, "direct", "direct", conc)
        cells = []
        for key in keys:
            s = self.c(measure, key[0], key[1], conc) if key else None
            if s is None:
                cells.append(NOT_YET if measure == "https-inspected" and key and
                              key[0] == "corridor" else "-")  # fmt: skip
                continue
            if what == "conn_per_s":
                base = direct.conn_per_s if direct and key != ("direct", "direct") else None
                cells.append(fmt_int(s.conn_per_s) + fmt_pct(s.conn_per_s, base))
            elif what == "cpu_us":
                cells.append(fmt_cpu(s))
            else:
                v = getattr(s, what)
                base = getattr(direct, what) if direct and key != ("direct", "direct") else None
                cells.append(fmt_delta_ms(v, base))
        return [label, *cells]

    def _bulk_row(self, label: str, measure: str) -> list[str]:
        direct = self.b(measure, "direct", "direct")
        cells = []
        for key in column_keys(measure):
            s = self.b(measure, key[0], key[1]) if key else None
            if s is None or s.mb_per_s is None:
                cells.append(NOT_YET if measure == "https-inspected" and key and
                              key[0] == "corridor" else "-")  # fmt: skip
                continue
            base = direct.mb_per_s if direct and key != ("direct", "direct") else None
            text = f"{s.mb_per_s:,.0f}" + fmt_pct(s.mb_per_s, base)
            if not s.complete:
                text += " INCOMPLETE"
            cells.append(text)
        return [label, *cells]

    def main_table(self) -> list[str]:
        rows = []
        for measure, name in (("https", "HTTPS passthrough"), ("http", "HTTP proxied")):
            for conc in (1, 64):
                rows.append(self._conn_row(f"{name} conn/s, C={conc}", measure, conc,
                                           "conn_per_s"))  # fmt: skip
            rows.append(self._conn_row(f"{name} p50, C=1", measure, 1, "p50_ms"))
            rows.append(self._conn_row(f"{name} p99, C=1", measure, 1, "p99_ms"))
            rows.append(self._conn_row(f"{name} p50, C=64", measure, 64, "p50_ms"))
            rows.append(self._conn_row(f"{name} proxy CPU per conn, C=64", measure, 64,
                                       "cpu_us"))  # fmt: skip
        for conc in (1, 64):
            rows.append(self._conn_row(f"HTTPS inspected conn/s, C={conc}", "https-inspected",
                                       conc, "conn_per_s"))  # fmt: skip
        rows.append(self._conn_row("HTTPS inspected proxy CPU per conn, C=64",
                                   "https-inspected", 64, "cpu_us"))  # fmt: skip
        rows.append(self._bulk_row("single-stream MB/s, HTTPS (tunnel)", "https"))
        rows.append(self._bulk_row("single-stream MB/s, HTTP", "http"))
        rows.append(self._bulk_row("single-stream MB/s, HTTPS inspected", "https-inspected"))
        rows += self._rss_rows()
        return table(["measure", *PEER_COLUMNS], rows)

    def _rss_rows(self) -> list[list[str]]:
        rss = self.r.get("rss", {})
        names = [None, "squid", "tinyproxy", "mitmproxy", "corridor", None]
        rows = []
        for label, get in (
            ("proxy RSS at start", lambda x: x.get("start")),
            ("proxy RSS after load", lambda x: x.get("after_load")),
            (f"proxy RSS, {IDLE_TUNNELS:,} idle tunnels",
             lambda x: x.get("idle_tunnels", {}).get("idle")),
            ("proxy RSS after they closed", lambda x: x.get("idle_tunnels", {}).get("after")),
        ):  # fmt: skip
            cells = []
            for n in names:
                v = get(rss[n]) if n and n in rss else None
                cells.append(fmt_mb(v))
            rows.append([label, *cells])
        mi = rss.get("mitmproxy-intercept", {}).get("after_load")
        if mi:
            rows[1][4] += f" ({fmt_mb(mi)} intercepting)"
        return rows

    def ratio_table(self) -> list[str]:
        """corridor against direct and each peer, on the headline figures."""
        peers = ("direct", "squid", "tinyproxy", "mitmproxy")
        headlines = [
            # label, measure, concurrency (None: the single-stream download), figure, better
            ("HTTPS passthrough conn/s, C=64", "https", 64, "conn_per_s", "higher"),
            ("HTTPS passthrough p50, C=1", "https", 1, "p50_ms", "lower"),
            ("HTTP proxied conn/s, C=64", "http", 64, "conn_per_s", "higher"),
            ("single-stream MB/s, HTTPS tunnel", "https", None, "mb_per_s", "higher"),
            ("single-stream MB/s, HTTP", "http", None, "mb_per_s", "higher"),
            ("proxy CPU per HTTPS connection, C=64", "https", 64, "cpu_us", "lower"),
        ]
        rows = []
        for label, measure, conc, what, better in headlines:
            proxy_path = "absolute" if measure == "http" else "connect"

            def get(target: str, path: str, measure=measure, conc=conc, what=what):
                if conc is None:
                    return self._bv(measure, target, path)
                return self._v(measure, target, path, conc, what)

            for cpath, name in ((proxy_path, "proxy"), ("transparent", "transparent")):
                mine = get("corridor", cpath)
                cells = [
                    fmt_ratio(mine, get(p, "direct" if p == "direct" else proxy_path))
                    for p in peers
                ]
                rows.append([f"{label} ({name})", *cells, f"{better} is better"])
        return table(["corridor vs", *peers, ""], rows)

    def _v(self, measure: str, target: str, path: str, conc: int, what: str = "conn_per_s"):
        s = self.c(measure, target, path, conc)
        return getattr(s, what) if s else None

    def _bv(self, measure: str, target: str, path: str) -> float | None:
        s = self.b(measure, target, path)
        return s.mb_per_s if s else None

    # -- goals --------------------------------------------------------------------------

    def goals(self) -> list[tuple[str, str, str, bool | None]]:
        """(figure, goal, corridor now, met) for each figure of the issue."""
        out: list[tuple[str, str, str, bool | None]] = []
        direct64 = self._v("https", "direct", "direct", 64)
        for path in ("connect", "transparent"):
            v = self._v("https", "corridor", path, 64)
            ok = None if v is None or not direct64 else v >= GOAL_PASS_RATIO * direct64
            out.append((f"HTTPS passthrough conn/s, C=64 ({path})", ">= 95% of direct",
                        fmt_int(v) + fmt_pct(v, direct64), ok))  # fmt: skip
        d50 = self._v("https", "direct", "direct", 1, "p50_ms")
        for path in ("connect", "transparent"):
            v = self._v("https", "corridor", path, 1, "p50_ms")
            ok = None if v is None or d50 is None else v - d50 <= GOAL_P50_EXTRA_MS
            out.append((f"HTTPS passthrough p50, C=1 ({path})", "<= +0.10 ms over direct",
                        fmt_delta_ms(v, d50), ok))  # fmt: skip
        tiny = self._v("http", "tinyproxy", "absolute", 64)
        for path in ("absolute", "transparent"):
            v = self._v("http", "corridor", path, 64)
            ok = None if v is None or not tiny else v >= GOAL_HTTP_VS_TINYPROXY * tiny
            out.append((f"HTTP proxied conn/s, C=64 ({path})", ">= 2x tinyproxy",
                        f"{fmt_int(v)} ({fmt_ratio(v, tiny)} tinyproxy)", ok))  # fmt: skip
        for measure, path in (("https", "connect"), ("http", "absolute"),
                              ("https", "transparent"), ("http", "transparent")):  # fmt: skip
            v, base = self._bv(measure, "corridor", path), self._bv(measure, "direct", "direct")
            ok = None if v is None or not base else v >= GOAL_TUNNEL_RATIO * base
            out.append((f"single-stream MB/s, {measure.upper()} ({path})", ">= 80% of direct",
                        f"{fmt_int(v)}{fmt_pct(v, base)}", ok))  # fmt: skip
        mitm = self._v("https-inspected", "mitmproxy", "connect", 64)
        mitm_mb = self._bv("https-inspected", "mitmproxy", "connect")
        for path in ("connect", "transparent"):
            v = self._v("https-inspected", "corridor", path, 64)
            ok = None if v is None or not mitm else v >= GOAL_INSPECT_VS_MITM * mitm
            out.append((f"HTTPS inspected conn/s, C=64 ({path})",
                        f">= 10x mitmproxy ({fmt_int(mitm)})",
                        NOT_YET if v is None else f"{fmt_int(v)} ({fmt_ratio(v, mitm)} mitmproxy)",
                        ok))  # fmt: skip
            v = self._bv("https-inspected", "corridor", path)
            ok = None if v is None or not mitm_mb else v >= GOAL_INSPECT_MB_VS_MITM * mitm_mb
            now = NOT_YET if v is None else f"{fmt_int(v)} ({fmt_ratio(v, mitm_mb)} mitmproxy)"
            out.append((f"HTTPS inspected single-stream MB/s ({path})",
                        f">= 4x mitmproxy ({fmt_int(mitm_mb)})", now, ok))  # fmt: skip
        cpu = self._v("https", "corridor", "connect", 64, "cpu_us")
        out.append(("proxy CPU per HTTPS passthrough connection (C=64, proxy)", "<= 200 us",
                    "-" if cpu is None else f"{cpu:,.0f} us",
                    None if cpu is None else cpu <= GOAL_CPU_PASS_US))  # fmt: skip
        cpu_t = self._v("https", "corridor", "transparent", 64, "cpu_us")
        out.append(("gateway CPU per HTTPS connection (C=64, transparent, whole corridor)",
                    "<= 200 us", "-" if cpu_t is None else f"{cpu_t:,.0f} us",
                    None if cpu_t is None else cpu_t <= GOAL_CPU_PASS_US))  # fmt: skip
        cpu_i = self._v("https-inspected", "corridor", "connect", 64, "cpu_us")
        out.append(("proxy CPU per inspected connection (C=64, proxy)", "<= 600 us",
                    NOT_YET if cpu_i is None else f"{cpu_i:,.0f} us",
                    None if cpu_i is None else cpu_i <= GOAL_CPU_INSPECT_US))  # fmt: skip
        rss = self.r.get("rss", {}).get("corridor", {})
        idle = rss.get("idle_tunnels", {}).get("idle")
        ok = None
        if idle is not None and rss.get("start") and rss.get("after_load"):
            ok = (
                idle <= GOAL_IDLE_RSS_MB * MB
                and rss["after_load"] <= GOAL_FLAT_GROWTH * rss["start"]
            )
        out.append((f"RSS with {IDLE_TUNNELS:,} idle tunnels; flat after load",
                    "<= 30 MB, flat", f"{fmt_mb(idle)}; {fmt_mb(rss.get('start'))} at start, "
                    f"{fmt_mb(rss.get('after_load'))} after load", ok))  # fmt: skip
        start = self.r.get("sandbox", {}).get("start", {}).get("corridor", {}).get("median_ms")
        out.append(("sandbox start (`corridor run -- true`)", "<= 100 ms",
                    fmt_ms(start), None if start is None else start <= GOAL_START_MS))  # fmt: skip
        curl = self.r.get("sandbox", {}).get("curl", {})
        for scheme in ("http", "https"):
            bare = curl.get(f"{scheme}/bare", {}).get("per_request_ms")
            for name in ("corridor", "corridor-transparent"):
                v = curl.get(f"{scheme}/{name}", {}).get("per_request_ms")
                ok = None if v is None or bare is None else v - bare <= GOAL_PER_REQUEST_MS
                out.append((f"per-request overhead, sequential curl {scheme.upper()} ({name})",
                            "<= +0.5 ms", fmt_delta_ms(v, bare), ok))  # fmt: skip
        dl = self.r.get("sandbox", {}).get("download", {})
        for scheme in ("http", "https"):
            v = dl.get(f"{scheme}/corridor", {}).get("median_mb_per_s")
            srt = dl.get(f"{scheme}/srt", {}).get("median_mb_per_s")
            ok = None if v is None or not srt else v >= GOAL_DOWNLOAD_VS_SRT * srt
            out.append((f"256 MiB download inside the sandbox, {scheme.upper()}", ">= 4x srt",
                        f"{fmt_int(v)} MB/s ({fmt_ratio(v, srt)} srt)", ok))  # fmt: skip
        audit = self.r.get("audit", {}).get("events_per_s")
        out.append(("audit events/s sustained", ">= 50,000", fmt_int(audit),
                    None if audit is None else audit >= GOAL_AUDIT_EVENTS_S))  # fmt: skip
        return out

    def goal_table(self) -> list[str]:
        return table(
            ["figure", "goal", "corridor now", "met"],
            [[f, g, v, met(ok)] for f, g, v, ok in self.goals()],
        )

    # -- the sandbox, audit and detail tables ----------------------------------------------

    def sandbox_tables(self) -> list[str]:
        sb = self.r.get("sandbox", {})
        out = ["### Sandbox start (`SANDBOX true`, wall time, median)", ""]
        start = sb.get("start", {})
        rows = []
        for name, label in (("bare", "bare `true`"), ("bwrap", "`bwrap ... true`"),
                            ("corridor", "`corridor run -- true`"),
                            ("corridor-cli-only", "`corridor --version` (CLI start alone)"),
                            ("srt", "`srt true`"),
                            ("codex", "`codex sandbox -- true`")):  # fmt: skip
            s = start.get(name, {})
            text = s.get("skipped") or fmt_ms(s.get("median_ms"))
            if s.get("error"):
                text += f" (failed: {s['error'][:120]})"
            rows.append([label, text])
        out += table(["sandbox", "start"], rows)
        out += ["", "### Inside one sandbox: sequential curl GETs of the 100-byte body", ""]
        curl = sb.get("curl", {})
        rows = []
        for scheme in ("http", "https"):
            bare = curl.get(f"{scheme}/bare", {}).get("per_request_ms")
            for name, label in (("bare", "bare"), ("corridor", "corridor (proxy env)"),
                                ("corridor-transparent", "corridor (transparent)"),
                                ("srt", "srt")):  # fmt: skip
                s = curl.get(f"{scheme}/{name}", {})
                if "skipped" in s:
                    rows.append([scheme.upper(), label, s["skipped"], "", ""])
                    continue
                v = s.get("per_request_ms")
                delta = "" if name == "bare" else fmt_delta_ms(v, bare)
                errs = "; ".join(s.get("errors", []))[:120]
                rows.append([scheme.upper(), label, fmt_ms(v), delta, errs])
        out += table(["scheme", "sandbox", "per request", "overhead", "errors"], rows)
        out += ["", "### Inside one sandbox: the 256 MiB body with curl", ""]
        dl = sb.get("download", {})
        rows = []
        for scheme in ("http", "https"):
            for name in ("bare", "corridor", "srt"):
                s = dl.get(f"{scheme}/{name}", {})
                if "skipped" in s:
                    rows.append([scheme.upper(), name, s["skipped"], "", ""])
                    continue
                rows.append([scheme.upper(), name, fmt_int(s.get("median_mb_per_s")),
                             "yes" if s.get("sha256_ok") else "**no**",
                             "; ".join(s.get("errors", []))[:160]])  # fmt: skip
        out += table(["scheme", "sandbox", "MB/s", "SHA-256 intact", "errors"], rows)
        return out

    def audit_table(self) -> list[str]:
        a = self.r.get("audit", {})
        if "failed" in a:
            return [f"audit benchmark failed: {a['failed'][-300:]}"]
        with_a = self._v("https", "corridor", "connect", 1, "p50_ms")
        without = self._v("https", "corridor-noaudit", "connect", 1, "p50_ms")
        cpu_a = self._v("https", "corridor", "connect", 64, "cpu_us")
        cpu_n = self._v("https", "corridor-noaudit", "connect", 64, "cpu_us")
        rows = [
            ["events stored per second (sustained, to commit)", fmt_int(a.get("events_per_s"))],
            ["hot path per event (build + emit)",
             "-" if a.get("hot_path_us_per_event") is None
             else f"{a['hot_path_us_per_event']:.1f} us"],
            ["HTTPS CONNECT p50 at C=1, with audit / without",
             f"{fmt_ms(with_a)} / {fmt_ms(without)} ({fmt_delta_ms(with_a, without)})"],
            ["gateway CPU per connection at C=64, with audit / without",
             "-" if cpu_a is None or cpu_n is None
             else f"{cpu_a:,.0f} us / {cpu_n:,.0f} us ({cpu_a - cpu_n:+,.0f} us)"],
        ]  # fmt: skip
        if a.get("error"):
            rows.append(["error", a["error"][:200]])
        return table(["audit", "value"], rows)

    def detail_table(self) -> list[str]:
        rows = []
        for (measure, target, path, conc), s in sorted(self.conns.items()):
            direct = self.c(measure, "direct", "direct", conc)
            base = direct.conn_per_s if direct else None
            rows.append([
                measure, target, path, str(conc),
                fmt_int(s.conn_per_s) + fmt_pct(s.conn_per_s, base),
                fmt_ms(s.p50_ms), fmt_ms(s.p99_ms),
                fmt_cpu(s),
                "-" if s.client_cores is None else f"{s.client_cores:.2f}",
                "-" if s.others_cores is None else f"{s.others_cores:.2f}",
                str(s.errors) + (f", {len(s.failed)} failed" if s.failed else ""),
                f"{s.rounds} ({s.attempts})",
            ])  # fmt: skip
        out = table(["measure", "target", "path", "C", "conn/s (of direct)", "p50", "p99",
                     "proxy CPU/conn", "client cores", "others' cores", "errors",
                     "runs (attempts)"], rows)  # fmt: skip
        out += ["", "Single-stream downloads of the 256 MiB body (MB/s, median; min-max):", ""]
        rows = []
        for (measure, target, path), s in sorted(self.bulk.items()):
            rows.append([measure, target, path, fmt_int(s.mb_per_s),
                         f"{fmt_int(s.low)}-{fmt_int(s.high)}",
                         "-" if s.cpu_s is None else f"{s.cpu_s:.2f} s",
                         "yes" if s.complete else "**no**"])  # fmt: skip
        out += table(["measure", "target", "path", "MB/s", "range", "proxy CPU", "complete"],
                     rows)  # fmt: skip
        integ = self.r.get("integrity", [])
        if integ:
            bad = [i for i in integ if not (i.get("complete") and i.get("sha256_ok"))]
            out += ["", f"Body integrity (byte count and SHA-256 of the 256 MiB body, every "
                    f"route): {len(integ) - len(bad)}/{len(integ)} intact"
                    + ("" if not bad else "; broken: " + ", ".join(
                        f"{i['measure']}/{i['target']}/{i['path']}" for i in bad))]  # fmt: skip
        return out

    def machine(self) -> list[str]:
        m = self.meta
        lb, la = m.get("load_before"), m.get("load_after")
        lines = [
            f"- Command: `{m.get('command', 'make bench')}`; started {m.get('started', '?')}, "
            f"took {m.get('seconds', '?')} s; {m.get('cores', '?')} cores, "
            f"kernel {m.get('kernel', '?')}.",
            f"- Figures: {_rounds(m.get('durations', {}).get('rounds'))} of "
            f"{m.get('durations', {}).get('window_s', '?')} s each (after "
            f"{m.get('durations', {}).get('warmup_s', '?')} s warm-up), direct and every peer "
            "measured in each round. Load client: Python, 4 processes x 16 threads at C=64, "
            "one new connection per request, TLS 1.3 with a P-256 certificate, no resumption.",
        ]
        if lb and la:
            others = m.get("others_cores")
            lines.append(
                f"- Machine load (1/5/15 min) before: {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}, "
                f"after: {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}"
                + ("" if others is None else
                   f"; processes other than the bench's used {others:.2f} cores on average "
                   "during the run (the load average after it is mostly the bench's own "
                   "64 client threads)")
                + "."
                + (" **The machine was shared with other developers running tests: figures "
                   "are noisier and lower than on an idle machine.**"
                   if m.get("loaded_machine") else "")
            )  # fmt: skip
        v = m.get("versions", {})
        if v:
            lines.append("- Versions: " + "; ".join(f"{k}: {val}" for k, val in v.items()) + ".")
        for name, why in m.get("skipped", {}).items():
            lines.append(f"- Skipped {name}: {why}")
        for run in self.r.get("corridor_runs", []):
            if run.get("exit_code"):
                lines.append(
                    f"- `corridor run` (transparent rows, round {run['round'] + 1}) exited "
                    f"{run['exit_code']}: {run.get('output', '').strip()[-200:]}"
                )
        return lines

    def markdown(self) -> str:
        out = [
            "# corridor benchmark results",
            "",
            "Produced by `make bench` (bench/run.py); raw data in bench/results.json.",
            "",
        ]
        out += self.machine()
        out += ["", "## Side by side", ""]
        out += [
            "Proxy rows: conn/s with the share of direct in brackets; latencies as the delta "
            "to direct; CPU is the proxy process's utime+stime over the measured window "
            "divided by the connections completed in it (corridor transparent: `corridor run` "
            "and its gateway process `corridor-gw`, audit writer included). Memory is RSS of "
            "the proxy process. mitmproxy: every host ignored for the HTTPS passthrough rows, "
            "intercepting for plain HTTP and the inspected rows. corridor inspected: a policy "
            "whose rule for the upstream says `inspect: true`.",
            "",
        ]
        out += self.main_table()
        out += ["", "## The issue's figures", ""]
        out += self.goal_table()
        out += ["", "## Ratios (corridor / other; for latency lower is better)", ""]
        out += self.ratio_table()
        out += ["", "## Sandboxes", ""]
        out += self.sandbox_tables()
        out += ["", "## Audit", ""]
        out += self.audit_table()
        out += ["", "## Every cell", ""]
        out += [
            "client cores: the load client's CPU over the window. others' cores: CPU used "
            "meanwhile by processes other than the client, the proxy and nginx (the machine "
            "is shared); a cell above 0.25 was measured again, up to twice, and the least "
            "disturbed attempt kept.",
            "",
        ]
        out += self.detail_table()
        if self.r.get("profiles"):
            out += ["", "py-spy profiles: " + ", ".join(self.r["profiles"].values())]
        return "\n".join(out) + "\n"

    def readme_block(self) -> str:
        m = self.meta
        d = m.get("durations", {})
        busy = m.get("others_cores")
        lines = [
            README_START,
            f"`{m.get('command', 'make bench')}` on {m.get('started', '?')}: "
            f"{m.get('cores', '?')} cores, {_rounds(d.get('rounds'))} of "
            f"{d.get('window_s', '?')} s"
            + (
                f"; other processes used {busy:.2f} cores on average meanwhile (a shared "
                "machine: figures are noisier and lower than on an idle one)"
                if m.get("loaded_machine") and busy is not None
                else ""
            )
            + ". Every table, the sandbox rows and the raw data: "
            "[bench/results.md](bench/results.md).",
            "",
            *self.main_table(),
            "",
            *self.goal_table(),
            "",
            "![corridor beside direct and its peers](bench/results.png)",
            README_END,
        ]
        return "\n".join(lines)


def update_readme(block: str, path: Path = README) -> bool:
    """Replace the text between the markers in the README; False if they are missing."""
    if not path.exists():
        return False
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    path.write_text(text[:start] + block + text[end + len(README_END) :])
    return True


# ---- the chart ------------------------------------------------------------------------------


def chart(rep: Report, path: Path) -> str | None:
    """A PNG with four panels; returns why not when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (bench/.venv-tools)"
    labels = list(PEER_COLUMNS)
    panels = [
        ("HTTPS passthrough conn/s, C=64",
         [rep._v("https", t, p, 64) for t, p in column_keys("https")]),
        ("HTTP proxied conn/s, C=64",
         [rep._v("http", t, p, 64) for t, p in column_keys("http")]),
        ("single-stream MB/s (HTTPS tunnel)",
         [rep._bv("https", t, p) for t, p in column_keys("https")]),
        ("proxy CPU us per HTTPS connection, C=64",
         [rep._v("https", t, p, 64, "cpu_us") for t, p in column_keys("https")]),
    ]  # fmt: skip
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    colors = ["#888888", "#4c72b0", "#55a868", "#c44e52", "#dd8452", "#e5ae38"]
    for ax, (title, values) in zip(axes.flat, panels, strict=True):
        heights = [v or 0 for v in values]
        bars = ax.bar(range(len(labels)), heights, color=colors)
        ax.set_title(title)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=9)
        for bar, v in zip(bars, values, strict=True):
            ax.annotate("n/a" if v is None else f"{v:,.0f}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
    m = rep.meta
    note = " (loaded machine)" if m.get("loaded_machine") else ""
    fig.suptitle(f"corridor vs direct and peers, {m.get('cores', '?')} cores{note}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else RESULTS_JSON
    rep = Report(json.loads(src.read_text()))
    text = rep.markdown()
    why = chart(rep, RESULTS_PNG)
    if why:
        text += f"\nChart not drawn: {why}.\n"
    RESULTS_MD.write_text(text)
    print(f"wrote {RESULTS_MD}" + ("" if why else f" and {RESULTS_PNG}"), file=sys.stderr)
    if update_readme(rep.readme_block()):
        print(f"updated the benchmark table in {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
