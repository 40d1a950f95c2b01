"""Render a ``RunReport``: a terminal table, JUnit XML for CI systems, Markdown, JSON.

Results are grouped by source (RFC and section, in numeric order) and, inside a group, listed
by level (MUST, SHOULD, MAY, HARDENING). Every failure is reported whatever its level; only
MUST failures make the run fail (``RunReport.exit_code``).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import groupby

from conformance.cases.base import LEVELS
from conformance.runner import CaseResult, RunReport

_SYMBOL = {"pass": "PASS", "fail": "FAIL", "skip": "skip", "error": "ERROR"}


def source_key(source: str) -> tuple[int, str, tuple[int, ...], str]:
    """Sort key: RFCs by number and section, then other specifications by name."""
    match = re.match(r"RFC (\d+)(?: §([\d.]+))?", source)
    if match:
        section = tuple(int(p) for p in (match.group(2) or "0").split(".") if p)
        return (0, f"{int(match.group(1)):06d}", section, source)
    return (1, source, (), source)


def grouped(results: Iterable[CaseResult]) -> list[tuple[str, list[CaseResult]]]:
    ordered = sorted(results, key=lambda r: (source_key(r.source), LEVELS.index(r.level)))  # type: ignore[arg-type]
    return [(source, list(items)) for source, items in groupby(ordered, key=lambda r: r.source)]


def summary_line(report: RunReport) -> str:
    total = {"pass": 0, "fail": 0, "skip": 0, "error": 0}
    for row in report.counts().values():
        for k, v in row.items():
            total[k] += v
    must = len(report.must_failures)
    verdict = "CONFORMANT (every MUST passed)" if must == 0 else f"NOT CONFORMANT ({must} MUST case(s) failed)"
    return (f"{total['pass']} passed, {total['fail'] + total['error']} failed, {total['skip']} skipped"
            f" in {report.duration:.1f}s: {verdict}")


def format_table(report: RunReport, *, show_skips: bool = True, failures_only: bool = False) -> str:
    """A plain-text table for a terminal or a CI log."""
    lines = [f"Conformance of {report.profile_name} ({report.token_endpoint})", ""]
    width = max((len(r.id) for r in report.results), default=10)
    for source, items in grouped(report.results):
        rows = []
        for r in items:
            if (r.outcome == "skip" and not show_skips) or (failures_only and not r.failed):
                continue
            note = f"  {r.message}" if r.message and r.outcome != "pass" else ""
            rows.append(f"  {_SYMBOL[r.outcome]:<5} {r.level:<9} {r.id:<{width}}{note}".rstrip())
        if rows:
            lines += [source, *rows, ""]
    lines.append(_counts_text(report))
    lines.append(summary_line(report))
    return "\n".join(lines)


def _counts_text(report: RunReport) -> str:
    counts = report.counts()
    parts = []
    for level in LEVELS:
        row = counts.get(level)
        if row:
            parts.append(f"{level}: {row['pass']} pass, {row['fail'] + row['error']} fail, {row['skip']} skip")
    return "; ".join(parts)


def to_junit(report: RunReport) -> str:
    """JUnit XML: one testsuite per source, one testcase per case; failures carry the level."""
    suites = ET.Element("testsuites", name=f"conformance:{report.profile_name}",
                        tests=str(len(report.results)),
                        failures=str(sum(r.outcome == "fail" for r in report.results)),
                        errors=str(sum(r.outcome == "error" for r in report.results)),
                        time=f"{report.duration:.3f}")
    for source, items in grouped(report.results):
        suite = ET.SubElement(suites, "testsuite", name=source, tests=str(len(items)),
                              failures=str(sum(r.outcome == "fail" for r in items)),
                              errors=str(sum(r.outcome == "error" for r in items)),
                              skipped=str(sum(r.outcome == "skip" for r in items)),
                              time=f"{sum(r.duration for r in items):.3f}")
        for r in items:
            tc = ET.SubElement(suite, "testcase", classname=f"{source} [{r.level}]", name=r.id,
                               time=f"{r.duration:.3f}")
            props = ET.SubElement(tc, "properties")
            ET.SubElement(props, "property", name="level", value=r.level)
            ET.SubElement(props, "property", name="title", value=r.title)
            if r.outcome in ("fail", "error"):
                ET.SubElement(tc, "failure" if r.outcome == "fail" else "error",
                              message=r.message, type=r.level).text = f"{r.title}\n{r.message}"
            elif r.outcome == "skip":
                ET.SubElement(tc, "skipped", message=r.message)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: RunReport, *, heading_level: int = 2) -> str:
    """A Markdown report: verdict, counts by level, failures, then every case by source."""
    h = "#" * heading_level
    when = datetime.fromtimestamp(report.started_at, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"{h} Conformance report: {_md(report.profile_name)}", "",
           f"Target `{report.token_endpoint}`, run {when}.", "", f"**{summary_line(report)}**", "",
           "| Level | Pass | Fail | Skip |", "|---|---:|---:|---:|"]
    counts = report.counts()
    for level in LEVELS:
        if level in counts:
            row = counts[level]
            out.append(f"| {level} | {row['pass']} | {row['fail'] + row['error']} | {row['skip']} |")
    failures = [r for r in report.results if r.failed]
    out += ["", f"{h}# Failures", ""]
    if failures:
        for r in sorted(failures, key=lambda r: (LEVELS.index(r.level), r.id)):  # type: ignore[arg-type]
            out.append(f"- **{r.level}** `{r.id}` ({_md(r.source)}): {_md(r.title)}. {_md(r.message)}")
    else:
        out.append("None.")
    out += ["", f"{h}# Cases by source", ""]
    for source, items in grouped(report.results):
        out += [f"{h}## {_md(source)}", "", "| Case | Level | Result | Notes |", "|---|---|---|---|"]
        for r in items:
            note = _md(r.message) if r.outcome != "pass" else ""
            out.append(f"| `{r.id}`<br>{_md(r.title)} | {r.level} | {_SYMBOL[r.outcome]} | {note} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def to_json(report: RunReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
