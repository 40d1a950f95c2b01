"""Command line: ``sts conformance`` (the lead registers ``conformance_command``) and
``python -m conformance``.

Exit codes: 0 when no failure counted under ``--fail-on`` (default ``must``: MUST failures and
the HARDENING security properties, see ``conformance.verdict``), 1 when one did, 2 for a usage or
profile error, 3 when a sanity gate failed and the dependent cases are INCONCLUSIVE
(``conformance.gate``). Other failures are reported but do not change the exit code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from conformance.cases import all_cases
from conformance.profile import ProfileError, load_profile
from conformance.report import format_table, to_json, to_junit, to_markdown
from conformance.runner import CaseResult, prepare, run, select
from conformance.verdict import FAIL_ON_CHOICES, FailOn


class _SetupError(click.ClickException):
    exit_code = 2


@click.command("conformance")
@click.option("--target", "target", type=click.Path(dir_okay=False, path_type=Path),
              help="Target profile (.toml, .yaml or .yml).")
@click.option("--junit", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write a JUnit XML report to this file.")
@click.option("--markdown", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write a Markdown report to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
@click.option("--only", multiple=True, metavar="PATTERN",
              help="Run only cases whose id matches this glob (repeatable), e.g. 'rfc8725.*'.")
@click.option("--list", "list_cases", is_flag=True, help="List the cases and exit.")
@click.option("--prepare", "prepare_only", is_flag=True,
              help="Write the files the profile names for the target to trust (the issuer's keys and JWKS, "
                   "its throwaway TLS CA) and exit.")
@click.option("--quiet", is_flag=True, help="Print only failures and the summary.")
@click.option("--fail-on", "fail_on", type=click.Choice(FAIL_ON_CHOICES), default="must", show_default=True,
              help="Failures that make the exit code 1: must (MUST and hardening security properties), "
                   "should (adds SHOULD), hardening (every failure).")
def conformance_command(target: Path | None, junit: Path | None, markdown: Path | None, as_json: bool,
                        only: tuple[str, ...], list_cases: bool, prepare_only: bool, quiet: bool,
                        fail_on: FailOn) -> None:
    """Run the RFC 8693 conformance kit against the token service described by a target profile."""
    if list_cases:
        for c in select(all_cases(), only):
            click.echo(f"{c.level:<9} {c.source:<28} {c.id}  {c.title}")
        return
    if target is None:
        raise click.UsageError("--target PROFILE is required")
    try:
        profile = load_profile(target)
    except ProfileError as exc:
        raise click.UsageError(str(exc)) from exc
    if prepare_only:
        try:
            issuer = prepare(profile)
        except OSError as exc:
            raise _SetupError(f"cannot prepare the kit's issuer: {exc}") from exc
        p = profile.issuer
        click.echo(f"issuer {p.url} ready: {len(issuer.jwks()['keys'])} public key(s)"
                   + (f", JWKS written to {p.jwks_file}" if p.jwks_file else "")
                   + (f", TLS CA for the target to trust in {p.tls_ca_file}" if p.tls_ca_file else ""))
        return

    def progress(result: CaseResult) -> None:
        if not as_json and not quiet:
            mark = {"pass": ".", "skip": "s", "fail": "F", "error": "E", "inconclusive": "?"}[result.outcome]
            click.echo(mark, nl=False, err=True)

    try:
        report = run(profile, only=only or None, fail_on=fail_on, progress=progress)
    except OSError as exc:
        # Typically the issuer's bind port is taken: a setup error, not a conformance verdict.
        raise _SetupError(f"cannot start the kit's issuer: {exc}") from exc
    if not as_json and not quiet:
        click.echo("", err=True)
    if junit:
        junit.write_text(to_junit(report), encoding="utf-8")
    if markdown:
        markdown.write_text(to_markdown(report), encoding="utf-8")
    click.echo(to_json(report) if as_json else format_table(report, failures_only=quiet))
    for gate, message in report.gate_failures.items():
        # On stderr as well, so that the one thing to fix is the last thing a CI log shows.
        click.echo(f"sanity gate {gate!r} failed: {message}", err=True)
    sys.exit(report.exit_code)


def main() -> None:
    conformance_command(prog_name="python -m conformance")
