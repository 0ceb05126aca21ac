"""Medians over rounds, the goal checks against the issue's figures, and the Markdown."""

from __future__ import annotations

import pytest

from bench import report


def _cell(measure, target, path, conc, rnd, cps, p50=1.0, cpu=None):
    c = {"measure": measure, "target": target, "path": path, "conc": conc, "round": rnd,
         "kind": "conns", "conn_per_s": cps, "p50_ms": p50, "p99_ms": p50 * 2, "errors": 0,
         "client_cores": 0.5}  # fmt: skip
    if cpu is not None:
        c["proxy_cpu_us_per_conn"] = cpu
    return c


def _results(corridor64: float, corridor_p50: float, cpu: float) -> dict:
    cells = []
    for rnd, jitter in enumerate((0.0, 10.0, -10.0)):
        cells += [
            _cell("https", "direct", "direct", 64, rnd, 1000 + jitter),
            _cell("https", "direct", "direct", 1, rnd, 800, p50=1.00),
            _cell("https", "corridor", "connect", 64, rnd, corridor64 + jitter, cpu=cpu),
            _cell("https", "corridor", "connect", 1, rnd, 700, p50=corridor_p50),
            _cell("http", "tinyproxy", "absolute", 64, rnd, 4000),
            _cell("http", "corridor", "absolute", 64, rnd, 9000),
        ]
    return {
        "cells": cells,
        "bulk": [
            {
                "measure": "https",
                "target": "direct",
                "path": "direct",
                "round": 0,
                "kind": "bulk",
                "mb_per_s": 1000.0,
                "complete": True,
            },
            {
                "measure": "https",
                "target": "corridor",
                "path": "connect",
                "round": 0,
                "kind": "bulk",
                "mb_per_s": 700.0,
                "complete": True,
            },
        ],
        "rss": {"corridor": {"start": 20e6, "after_load": 22e6, "idle_tunnels": {"idle": 25e6}}},
        "audit": {"events_per_s": 60_000.0},
    }


def test_medians_over_rounds():
    summary = report.summarize_cells(_results(960, 1.05, 150)["cells"])
    s = summary[("https", "corridor", "connect", 64)]
    assert s.conn_per_s == 960
    assert s.rounds == 3
    assert s.cpu_us == 150


def _goal(rep: report.Report, name: str):
    (hit,) = [g for g in rep.goals() if g[0] == name]
    return hit


@pytest.mark.parametrize(
    ("corridor64", "p50", "cpu", "figure", "now", "ok"),
    [
        (960, 1.05, 150, "HTTPS passthrough conn/s, C=64 (connect)", "960 (96%)", True),
        (940, 1.05, 150, "HTTPS passthrough conn/s, C=64 (connect)", "940 (94%)", False),
        (960, 1.05, 150, "HTTPS passthrough p50, C=1 (connect)", "+0.05 ms", True),
        (960, 1.20, 150, "HTTPS passthrough p50, C=1 (connect)", "+0.20 ms", False),
        (960, 1.0, 150, "HTTP proxied conn/s, C=64 (absolute)", "9,000 (2.25x tinyproxy)", True),
        (960, 1.0, 150, "single-stream MB/s, HTTPS (connect)", "700 (70%)", False),
        (960, 1.0, 150, "proxy CPU per HTTPS passthrough connection (C=64, proxy)", "150 us", True),
        (
            960,
            1.0,
            250,
            "proxy CPU per HTTPS passthrough connection (C=64, proxy)",
            "250 us",
            False,
        ),
        (960, 1.0, 150, "audit events/s sustained", "60,000", True),
        (960, 1.0, 150, "HTTPS inspected conn/s, C=64 (connect)", report.NOT_YET, None),
        (960, 1.0, 150, "HTTPS passthrough conn/s, C=64 (transparent)", "-", None),
    ],
    ids=[
        "pass-met",
        "pass-short",
        "p50-met",
        "p50-over",
        "http-2x",
        "tunnel-70pct",
        "cpu-met",
        "cpu-over",
        "audit",
        "inspected-not-yet",
        "missing-row",
    ],
)
def test_goals(corridor64, p50, cpu, figure, now, ok):
    rep = report.Report(_results(corridor64, p50, cpu))
    _, _, got_now, got_ok = _goal(rep, figure)
    assert got_now == now
    assert got_ok is ok


def test_idle_memory_goal_needs_flat_growth():
    results = _results(960, 1.0, 150)
    rep = report.Report(results)
    assert _goal(rep, "RSS with 1,000 idle tunnels; flat after load")[3] is True
    results["rss"]["corridor"]["after_load"] = 40e6  # doubled by load: not flat
    assert _goal(report.Report(results), "RSS with 1,000 idle tunnels; flat after load")[3] is False


def test_markdown_has_every_section():
    text = report.Report(_results(960, 1.05, 150)).markdown()
    for heading in ("## Side by side", "## The issue's figures", "## Ratios", "## Sandboxes",
                    "## Audit", "## Every cell"):  # fmt: skip
        assert heading in text
    assert "| HTTPS passthrough conn/s, C=64 | 1,000 | - | - | - | 960 (96%) | - |" in text


def test_readme_block_replaces_only_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_START}\nold table\n{report.README_END}\nafter\n")
    block = report.Report(_results(960, 1.05, 150)).readme_block()
    assert report.update_readme(block, readme)
    text = readme.read_text()
    assert text.startswith("intro\n" + report.README_START)
    assert text.endswith(report.README_END + "\nafter\n")
    assert "old table" not in text
    assert "| HTTPS passthrough conn/s, C=64 | 1,000 |" in text


def test_readme_without_markers_is_left_alone(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    assert not report.update_readme("block", readme)
    assert readme.read_text() == "no markers\n"
