"""CPU by part: py-spy's collapsed stacks mapped to named parts of an exchange (pure).

``bench.run --profile`` records the broker's worker (and the floor) with py-spy under
saturation and measures CPU per exchange meanwhile. This module assigns every sampled stack to
one *part* (HTTP server and loop, subject-token verify, sign, ...) and multiplies each part's
share of the samples by the measured CPU per exchange, giving µs per exchange per part.

How a stack is assigned, so that a rename only needs a pattern edit in :data:`RULES`:

0. A sample whose innermost frame matches an ``idle`` rule is a thread waiting in a C call
   that py-spy counted as busy (a blocking ``SimpleQueue.get``); it is left out of the shares
   and its count is shown under the table.
1. A sample from a thread other than the event loop's (its root frame is ``threading``'s
   bootstrap) belongs to the first ``thread`` rule whose pattern matches one of its frames,
   else to "other threads".
2. Otherwise the first ``specific`` rule, in list order, that matches *any* frame of the stack
   names the part. A part that runs inside another therefore comes first (the self-check runs
   inside signing, the log line inside the audit record).
3. Failing that, the ``fallback`` rules (pipeline glue, framework, server and loop) name the
   part of the *deepest* frame they match: they wrap every request, so only the innermost of
   them says where the time went. Then "other".

Frames are ``function (file)`` as py-spy writes them with ``--nolineno``; :func:`short_frame`
trims the file to a path relative to the repository or to ``site-packages``/the standard
library before matching, so the patterns below never see a machine's directories.

Run ``python -m bench.parts STACKS --cpu-us 1350`` to print the table for a collapsed file;
``--rules FILE`` reads the rules from a JSON list of ``{"part", "tier", "patterns"}`` instead.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


OTHER = "other"
OTHER_THREADS = "other threads"
IDLE = "idle waits (excluded)"


@dataclass(frozen=True)
class Rule:
    part: str
    tier: str  # "idle" | "thread" | "specific" | "fallback"
    patterns: tuple[str, ...]  # regular expressions searched in "function (file)"

    def matches(self, frame: str) -> bool:
        return any(re.search(p, frame) for p in self.patterns)


def _r(part: str, tier: str, *patterns: str) -> Rule:
    return Rule(part, tier, patterns)


# Keep the patterns about names, files and packages; the hot path is being renamed, so when a
# part comes out as "pipeline glue" or "other", look at the top frames of the profile and add
# the new name here. py-spy 0.4 qualifies methods ("GroupCommitWriter._run"), hence "(^|\.)".
RULES: tuple[Rule, ...] = (
    # Leaves where a thread waits in a C call that py-spy does not see as idle (SimpleQueue.get):
    # no CPU is spent there, so these samples are left out of the shares.
    _r(IDLE, "idle", r"(^|\.)_worker \(concurrent/futures/thread\.py\)$", r"(^|\.)_run \(sts/store/writer\.py\)$",
       r"(^|\.)(wait|get|acquire) \((threading|queue)\.py\)$", r"(^|\.)select \(selectors\.py\)$"),
    # The audit log lines are written by the writer thread after each commit.
    _r("JSON log line (writer thread)", "thread", r"\(logging/", r"\(sts/logs\.py\)", r"log_line"),
    _r("writer thread", "thread", r"\(sts/store/", r"\(sts/audit", r"sqlite3|psycopg|sqlalchemy/"),
    # Native frames: py-spy shows them only with --native (bench.run --profile --profile-native).
    _r("GC", "specific", r"^(gc_collect\w*|_PyGC_\w+|collect_generations?|deduce_unreachable|move_unreachable) ",
       r"\(gcmodule\.c\)"),
    _r("self-check of issued token", "specific", r"self_?check|check_own_\w+|verify_own|verify_issued|check_issued",
       r"\(sts/tokens/selfcheck"),
    _r("JSON log line", "specific", r"log_line|_log_record|emit_log|write_log|(^|\.)log_fields ",
       r"\(logging/",
       r"\(sts/(ops/)?log\w*\.py\)", r"\(sts/ops/logs?/"),
    _r("durable write (request side)", "specific", r"\(sts/store/", r"sqlite3|psycopg|sqlalchemy/"),
    _r("audit record building", "specific", r"\(sts/audit\.py\)", r"\(sts/audit/"),
    _r("sign", "specific", r"(^|\.)_?sign\w* \(sts/", r"\(sts/tokens/signer\.py\)",
       r"(^|\.)sign \(bench/jwtutil\.py\)"),
    _r("subject-token verify", "specific", r"\(sts/subject/", r"(^|\.)_?verify_subject",
       r"(^|\.)_verify \(sts/exchange\.py\)", r"(^|\.)verify \(bench/jwtutil\.py\)"),
    _r("policy/CEL", "specific", r"\(sts/trust/", r"\(celpy/", r"\(cel/", r"common_expression_language"),
    _r("client auth", "specific", r"\(sts/client_auth\.py\)", r"\(sts/clients?/"),
    _r("form parsing", "specific", r"\(urllib/parse\.py\)", r"parse_form|_form\b", r"(^|\.)form \(starlette/requests\.py\)",
       r"\(starlette/formparsers\.py\)", r"multipart", r"\(sts/protocol\.py\)", r"\(sts/http/form\.py\)"),
    # Fallbacks, tried at each frame from the innermost outwards, in this order: the request and
    # response layer (Starlette, or the raw ASGI token handler's own helpers), the server and
    # loop, then anything else of ours.
    _r("framework Request/Response", "fallback", r"\(starlette/",
       r"(^|\.)(read_body|_answer|request_id_of|encode_answer|_Headers\.\w+) \(sts/"),
    _r("HTTP server and loop", "fallback", r"\(uvicorn/", r"uvloop", r"\(asyncio/", r"\(h11/", r"httptools",
       r"\(selectors\.py\)", r"\(anyio/", r"\(sts/http/halfclose\.py\)"),
    _r("pipeline glue", "fallback", r"\(sts/", r"\(bench/floor\.py\)"),
)

_THREAD_ROOT = re.compile(r"(^|\.)_bootstrap(_inner)? \(threading\.py\)$")


def short_frame(frame: str, repo_root: str | None = None) -> str:
    """``function (file)`` with the file relative to the repository, site-packages or stdlib."""
    name, sep, where = frame.partition(" (")
    if not sep:
        return frame
    where = where[:-1] if where.endswith(")") else where
    if repo_root and where.startswith(repo_root.rstrip("/") + "/"):
        where = where[len(repo_root.rstrip("/")) + 1 :]
    elif "site-packages/" in where:
        where = where.split("site-packages/", 1)[1]
    else:
        stdlib = re.search(r"/lib/python3\.\d+/(.*)$", where)
        if stdlib:
            where = stdlib.group(1)
    return f"{name} ({where})"


def parse_collapsed(text: str, repo_root: str | None = None) -> list[tuple[list[str], int]]:
    """``(frames root-first, count)`` per line of ``a;b;c 12`` collapsed stacks."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            frames = [short_frame(f, repo_root) for f in stack.split(";") if f]
            # py-spy may prefix "process ..." / "thread ..." pseudo-frames (--threads, --subprocesses)
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
            if frames:
                stacks.append((frames, int(count)))
    return stacks


def classify(frames: Sequence[str], rules: Iterable[Rule] = RULES) -> str:
    """The part a stack (root first) belongs to."""
    rules = tuple(rules)
    if any(r.tier == "idle" and r.matches(frames[-1]) for r in rules):
        return IDLE
    if any(_THREAD_ROOT.search(f) for f in frames):
        for rule in rules:
            if rule.tier == "thread" and any(rule.matches(f) for f in frames):
                return rule.part
        return OTHER_THREADS
    for rule in rules:
        if rule.tier == "specific" and any(rule.matches(f) for f in frames):
            return rule.part
    fallback = [r for r in rules if r.tier == "fallback"]
    for frame in reversed(frames):
        for rule in fallback:
            if rule.matches(frame):
                return rule.part
    return OTHER


def by_part(stacks: Iterable[tuple[Sequence[str], int]], rules: Iterable[Rule] = RULES) -> Counter[str]:
    rules = tuple(rules)
    counts: Counter[str] = Counter()
    for frames, count in stacks:
        counts[classify(frames, rules)] += count
    return counts


def table(counts: Counter[str], cpu_us: float, title: str = "part") -> list[str]:
    """Markdown rows: µs per exchange per part, largest first, shares of the measured CPU.

    Idle samples are left out of the shares and listed last with their count."""
    idle = counts.get(IDLE, 0)
    busy = {part: n for part, n in counts.items() if part != IDLE}
    total = sum(busy.values())
    lines = [f"| {title} | µs/exchange | % samples |", "|---|---:|---:|"]
    if total == 0:
        return lines
    for part, n in sorted(busy.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| {part} | {n / total * cpu_us:,.0f} | {n / total * 100:.1f} |")
    lines.append(f"| **total** (measured CPU per exchange) | {cpu_us:,.0f} | 100.0 |")
    if idle:
        lines.append(f"| {IDLE}: {idle:,} samples, {idle / (idle + total) * 100:.1f}% of all | - | - |")
    return lines


def load_rules(path: Path) -> tuple[Rule, ...]:
    raw = json.loads(path.read_text())
    return tuple(Rule(r["part"], r["tier"], tuple(r["patterns"])) for r in raw)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.parts", description="CPU by part from collapsed stacks.")
    parser.add_argument("stacks", type=Path, help="py-spy --format raw output (collapsed stacks)")
    parser.add_argument("--cpu-us", type=float, required=True, help="measured CPU per exchange during the recording")
    parser.add_argument("--rules", type=Path, help="JSON list of {part, tier, patterns} replacing the built-in rules")
    parser.add_argument("--repo-root", help="directory to strip from file names (default: this repository)")
    args = parser.parse_args(argv)
    rules = load_rules(args.rules) if args.rules else RULES
    root = args.repo_root or str(Path(__file__).resolve().parent.parent)
    counts = by_part(parse_collapsed(args.stacks.read_text(), root), rules)
    print("\n".join(table(counts, args.cpu_us)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
