"""Render a ``RunReport``: a terminal table, JUnit XML for CI systems, Markdown, JSON.

Results are grouped by source (RFC and section, in numeric order) and, inside a group, listed
by level (MUST, SHOULD, MAY, HARDENING). Every failure is reported whatever its level; which
ones fail the run is ``--fail-on``'s decision (``conformance.verdict``), and every format says
the same as the exit code: a JUnit report holds a ``failure``/``error`` element exactly when the
exit code is non-zero (a failure not counted is a ``skipped`` with type
``conformance.not-counted``, as pytest writes an xfail; an INCONCLUSIVE case is an ``error``).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime
from itertools import groupby

from conformance.cases.base import LEVELS
from conformance.gate import EXIT_INCONCLUSIVE
from conformance.runner import OUTCOMES, CaseResult, RunReport

_SYMBOL = {"pass": "PASS", "fail": "FAIL", "skip": "skip", "error": "ERROR", "inconclusive": "INCONCLUSIVE"}
#: A failure reported but not counted under ``--fail-on``.
_NOT_COUNTED = "fail (not counted)"


def _symbol(report: RunReport, r: CaseResult) -> str:
    if r.failed and not report.counts_as_failure(r):
        return _NOT_COUNTED
    return _SYMBOL[r.outcome]


def failure_text(r: CaseResult) -> str:
    """A result's message with the specification section it enforces."""
    return f"{r.message} ({r.source})" if r.message else r.source


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


def verdict(report: RunReport) -> str:
    """The run's verdict in words; it follows ``report.exit_code`` and nothing else."""
    code, flag = report.exit_code, f"--fail-on {report.fail_on}"
    if code == EXIT_INCONCLUSIVE:
        return (f"INCONCLUSIVE ({len(report.inconclusive)} case(s) not concluded because a sanity gate failed;"
                " fix the target's configuration and rerun)")
    if code != 0:
        return f"NOT CONFORMANT ({len(report.counted_failures)} failure(s) counted under {flag})"
    return f"CONFORMANT (no failure counted under {flag})"


def summary_line(report: RunReport) -> str:
    total = dict.fromkeys(OUTCOMES, 0)
    for row in report.counts().values():
        for k, v in row.items():
            total[k] += v
    inconclusive = f", {total['inconclusive']} inconclusive" if total["inconclusive"] else ""
    return (f"{total['pass']} passed, {total['fail'] + total['error']} failed{inconclusive}, {total['skip']} skipped"
            f" in {report.duration:.1f}s: {verdict(report)}")


def gate_lines(report: RunReport) -> list[str]:
    return [f"SANITY GATE {gate!r} FAILED: {message}" for gate, message in report.gate_failures.items()]


def format_table(report: RunReport, *, show_skips: bool = True, failures_only: bool = False) -> str:
    """A plain-text table for a terminal or a CI log."""
    lines = [f"Conformance of {report.profile_name} ({report.token_endpoint})", ""]
    if report.gate_failures:
        lines += [*gate_lines(report), ""]
    width = max((len(r.id) for r in report.results), default=10)
    symbol_width = max((len(_symbol(report, r)) for r in report.results), default=5)
    for source, items in grouped(report.results):
        rows = []
        for r in items:
            if (r.outcome == "skip" and not show_skips) or (failures_only and not (r.failed or r.outcome == "inconclusive")):
                continue
            note = f"  {r.message}" if r.message and r.outcome != "pass" else ""
            rows.append(f"  {_symbol(report, r):<{symbol_width}} {r.level:<9} {r.id:<{width}}{note}".rstrip())
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
            more = f", {row['inconclusive']} inconclusive" if row["inconclusive"] else ""
            parts.append(f"{level}: {row['pass']} pass, {row['fail'] + row['error']} fail{more}, {row['skip']} skip")
    return "; ".join(parts)


def _junit_kind(report: RunReport, r: CaseResult) -> str | None:
    """The JUnit child element of a result: failure, error, skipped or none (passed)."""
    if r.outcome == "inconclusive":
        return "error"
    if r.failed:
        if not report.counts_as_failure(r):
            return "skipped"
        return "failure" if r.outcome == "fail" else "error"
    return "skipped" if r.outcome == "skip" else None


def to_junit(report: RunReport) -> str:
    """JUnit XML: one testsuite per source, one testcase per case; failures carry the level."""
    kinds = {id(r): _junit_kind(report, r) for r in report.results}

    def count(items: Iterable[CaseResult], kind: str) -> str:
        return str(sum(kinds[id(r)] == kind for r in items))

    suites = ET.Element("testsuites", name=f"conformance:{report.profile_name}",
                        tests=str(len(report.results)), failures=count(report.results, "failure"),
                        errors=count(report.results, "error"), time=f"{report.duration:.3f}")
    if report.gate_failures:
        ET.SubElement(suites, "properties")
        for gate, message in report.gate_failures.items():
            ET.SubElement(suites[0], "property", name=f"sanity-gate.{gate}", value=message)
    for source, items in grouped(report.results):
        suite = ET.SubElement(suites, "testsuite", name=source, tests=str(len(items)),
                              failures=count(items, "failure"), errors=count(items, "error"),
                              skipped=count(items, "skipped"), time=f"{sum(r.duration for r in items):.3f}")
        for r in items:
            tc = ET.SubElement(suite, "testcase", classname=f"{source} [{r.level}]", name=r.id,
                               time=f"{r.duration:.3f}")
            props = ET.SubElement(tc, "properties")
            ET.SubElement(props, "property", name="level", value=r.level)
            ET.SubElement(props, "property", name="title", value=r.title)
            kind = kinds[id(r)]
            if kind in ("failure", "error"):
                kind_type = "INCONCLUSIVE" if r.outcome == "inconclusive" else r.level
                ET.SubElement(tc, kind, message=failure_text(r), type=kind_type).text = f"{r.title}\n{failure_text(r)}"
            elif kind == "skipped" and r.failed:
                ET.SubElement(tc, "skipped", type="conformance.not-counted",
                              message=f"{r.level} failure not counted under --fail-on {report.fail_on}: "
                                      f"{failure_text(r)}")
            elif kind == "skipped":
                ET.SubElement(tc, "skipped", message=r.message)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: RunReport, *, heading_level: int = 2) -> str:
    """A Markdown report: verdict, counts by level, gates, failures, then every case by source."""
    h = "#" * heading_level
    when = datetime.fromtimestamp(report.started_at, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"{h} Conformance report: {_md(report.profile_name)}", "",
           f"Target `{report.token_endpoint}`, run {when}, `--fail-on {report.fail_on}`, exit code {report.exit_code}.",
           "", f"**{summary_line(report)}**", "",
           "| Level | Pass | Fail | Inconclusive | Skip |", "|---|---:|---:|---:|---:|"]
    counts = report.counts()
    for level in LEVELS:
        if level in counts:
            row = counts[level]
            out.append(f"| {level} | {row['pass']} | {row['fail'] + row['error']} | {row['inconclusive']} | {row['skip']} |")
    if report.gate_failures:
        out += ["", f"{h}# Sanity gates that failed", ""]
        out += [f"- **{_md(gate)}**: {_md(message)}" for gate, message in report.gate_failures.items()]
    by_level = lambda r: (LEVELS.index(r.level), r.id)  # type: ignore[arg-type]  # noqa: E731
    out += ["", f"{h}# Failures", ""]
    if report.counted_failures:
        for r in sorted(report.counted_failures, key=by_level):
            out.append(f"- **{r.level}** `{r.id}` ({_md(r.source)}): {_md(r.title)}. {_md(r.message)}")
    else:
        out.append("None.")
    if report.uncounted_failures:
        out += ["", f"{h}# Reported, not counted under `--fail-on {report.fail_on}`", ""]
        for r in sorted(report.uncounted_failures, key=by_level):
            out.append(f"- **{r.level}** `{r.id}` ({_md(r.source)}): {_md(r.title)}. {_md(r.message)}")
    out += ["", f"{h}# Cases by source", ""]
    for source, items in grouped(report.results):
        out += [f"{h}## {_md(source)}", "", "| Case | Level | Result | Notes |", "|---|---|---|---|"]
        for r in items:
            note = _md(r.message) if r.outcome != "pass" else ""
            out.append(f"| `{r.id}`<br>{_md(r.title)} | {r.level} | {_symbol(report, r)} | {note} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def to_json(report: RunReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
