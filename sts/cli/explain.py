"""``sts explain``: why the broker would issue or refuse a token, or why it did (docs/explain.md).

Two forms:

* ``sts explain --config PATH --token FILE|- [--audience X | --resource URI] [--scope "a b"]
  [--actor-token FILE] [--client-id ID] [--jwks FILE] [--at TIME] [--json]`` runs the server's
  exchange pipeline on the token without effects (``sts.explain``): nothing is issued, written or
  spent.
* ``sts explain --request-id ID [--database-url URL] [--json]`` shows what the audit record of a
  past request says, including the refusal details recorded for explaining.

Exit codes: 0 the broker would issue (or did); 1 it would refuse (or did); 3 it could not
decide (the server would answer 5xx: issuer keys unreachable, a failure); 2 a user error
(unreadable file, invalid configuration, unknown request id); 70 a bug.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from sts.cli.errors import UserError

EXIT_ISSUE = 0
EXIT_REFUSE = 1
EXIT_UNDECIDED = 3
_RECORD_EXIT = {"issued": EXIT_ISSUE, "denied": EXIT_REFUSE, "error": EXIT_UNDECIDED}


def _read_token(source: str, option: str) -> str:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{option} {source}: no such file", "give the file holding the token, or - for standard input") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{option} {source}: cannot read it ({type(exc).__name__})", "check the path and its permissions") from None
    token = text.strip()
    if not token:
        raise UserError(f"{option} {source}: the file is empty", "put the token (a compact JWT) in the file")
    return token


def _read_jwks(path: Path) -> dict[str, Any]:
    from sts import jose

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--jwks {path}: no such file", "give a JWK Set file, e.g. from the issuer's jwks_uri") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"--jwks {path}: not a JSON file ({type(exc).__name__})", "give a JWK Set: {\"keys\": [...]}") from None
    try:
        if not isinstance(doc, dict) or len(jose.parse_jwks(doc)) == 0:
            raise ValueError
    except (jose.JOSEError, ValueError):
        raise UserError(f"--jwks {path}: not a JWK Set with a usable public key", "give a JWK Set: {\"keys\": [...]}") from None
    return doc


@click.command("explain")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="trust configuration file or directory (default STS_CONFIG)")
@click.option("--token", "token_source", metavar="FILE|-", help="the subject token: a file, or - for standard input")
@click.option("--audience", "audiences", multiple=True, help="requested audience (repeatable, as in the request)")
@click.option("--resource", "resources", multiple=True, help="requested resource URI (repeatable)")
@click.option("--scope", help='requested scope, space separated ("a b"); default: the target\'s default scopes')
@click.option("--actor-token", "actor_source", metavar="FILE|-", help="an actor token (RFC 8693 delegation)")
@click.option("--client-id", help="the authenticated client (assumed authenticated: explain holds no secret)")
@click.option("--jwks", "jwks_path", type=click.Path(dir_okay=False, path_type=Path),
              help="verify with this JWK Set instead of fetching the issuer's keys (offline)")
@click.option("--token-type", default="urn:ietf:params:oauth:token-type:jwt", show_default=True,
              help="subject_token_type (id_token and access_token are JWTs too)")
@click.option("--at", "at", help="decide at this time (ISO 8601 or epoch seconds) instead of now")
@click.option("--dev", is_flag=True, default=None, help="dev mode, as `sts serve --dev` (loopback http issuers); default STS_DEV_MODE")
@click.option("--request-id", help="explain a past request from its audit record instead")
@click.option("--database-url", help="with --request-id: SQLAlchemy URL (STS_DATABASE_URL)")
@click.option("--json", "as_json", is_flag=True)
def explain(config_path: Path | None, token_source: str | None, audiences: tuple[str, ...], resources: tuple[str, ...],
            scope: str | None, actor_source: str | None, client_id: str | None, jwks_path: Path | None, token_type: str,
            at: str | None, dev: bool | None, request_id: str | None, database_url: str | None, as_json: bool) -> None:
    """Why the broker would issue or refuse a token for the --token, or why it did for a --request-id.

    Runs the server's own pipeline without effects: no token is issued, nothing is written and
    no one-time jti is spent. Exit 0: would issue; 1: would refuse; 3: could not decide
    (issuer keys unreachable); 2: a user error.
    """
    if request_id is not None:
        if token_source is not None:
            raise UserError("--request-id and --token explain different things", "give one of them")
        _explain_record(request_id, database_url, as_json)
        return
    if token_source is None:
        raise UserError("nothing to explain", "give --token FILE (or - for standard input), or --request-id ID")
    if token_source == "-" and actor_source == "-":
        raise UserError("--token and --actor-token cannot both read standard input", "put one of them in a file")
    from sts.config.loader import load_config
    from sts.explain.run import EXIT_CODES, ExplainInput, explain_exchange_sync
    from sts.explain.render import render_report
    from sts.ops.archive import BadTime, parse_time
    from sts.settings import load_settings

    overrides: dict[str, Any] = {"dev_mode": dev}
    if config_path is not None:
        overrides["config"] = config_path
    settings = load_settings(**overrides)
    loaded = load_config(settings.config)
    now = None
    if at is not None:
        try:
            now = parse_time(at)
        except BadTime as exc:
            raise UserError(f"--at: {exc}", "give ISO 8601 (2026-12-01T08:00:00Z) or epoch seconds") from None
    request = ExplainInput(
        subject_token=_read_token(token_source, "--token"),
        audiences=audiences,
        resources=resources,
        scope=scope,
        actor_token=_read_token(actor_source, "--actor-token") if actor_source is not None else None,
        client_id=client_id,
        subject_token_type=token_type,
    )
    jwks = _read_jwks(jwks_path) if jwks_path is not None else None
    report = explain_exchange_sync(loaded, request, jwks=jwks, now=now, dev_mode=settings.dev_mode)
    click.echo(json.dumps(report, indent=2, default=str) if as_json else render_report(report))
    sys.exit(EXIT_CODES[report["outcome"]])


def _explain_record(request_id: str, database_url: str | None, as_json: bool) -> None:
    from sts.cli.main import _open_database, _settings
    from sts.explain.record import records_for_request
    from sts.explain.render import render_record

    engine = _open_database(_settings(database_url=database_url).database_url)
    try:
        records = records_for_request(engine, request_id)
    finally:
        engine.dispose()
    if not records:
        raise UserError(f"no audit record has request id {request_id[:80]!r}",
                        "use the X-Request-Id header of the broker's answer, and the broker's database (--database-url)")
    if as_json:
        # Always a list, newest first: callers may reuse request ids.
        click.echo(json.dumps(records, indent=2, default=str))
    else:
        click.echo("\n\n".join(render_record(r) for r in records))
    sys.exit(_RECORD_EXIT.get(records[0]["outcome"], EXIT_REFUSE))
