"""``sts keys export-jwks``: the broker's published JWK Set as a file, for providers that take an
uploaded JWKS instead of fetching ``/jwks`` (RFC 7517 §5).

The set is exactly what ``GET /jwks`` serves: the active key, the published ``next`` key of
every algorithm and retired keys still within their publication window, public members only.
The ``next`` key is included on purpose: a provider holding only the uploaded file learns of a
rotation only when someone uploads again, so the file must already hold the key that will sign
next. The warning printed on stderr says so every time.

Exit codes: 0 written, 2 a user error (no database, no published key, unwritable ``--out``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click

from sts.cli.errors import UserError

ROTATION_WARNING = (
    "warning: a provider that stores this file does not see key rotations; upload it again after every "
    "`sts keys rotate`, before the next key starts signing (it is included here as state next)"
)


def published_keys(rows: Any, now: float, algs: tuple[str, ...] = ()) -> list[Any]:
    """The rows ``/jwks`` publishes (next, active, retired within ``publish_until``), in the
    order active, next, retired, optionally only for ``algs``."""
    order = {"active": 0, "next": 1, "retired": 2}
    keep = [r for r in rows if (r.state != "retired" or (r.publish_until or 0) > now) and (not algs or r.alg in algs)]
    return sorted(keep, key=lambda r: (r.alg, order.get(r.state, 3), -r.created_at))


@click.command("export-jwks")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), help="write the JWK Set to this file (default: standard output)")
@click.option("--alg", "algs", multiple=True, help="only keys of this algorithm (repeatable; default: every published key)")
@click.option("--json", "as_json", is_flag=True, help="print a JSON report (the set, its keys, where it went)")
def export_jwks(out: Path | None, algs: tuple[str, ...], as_json: bool) -> None:
    """Export the published signing keys, including the next key, as a JWK Set for upload to a
    provider that does not fetch the broker's /jwks (docs/providers/README.md)."""
    from sts.cli.main import _open_database, _settings, _when
    from sts.store.keys import KeyRepository

    settings = _settings()
    engine = _open_database(settings.database_url)
    try:
        rows = published_keys(KeyRepository(engine).list(), time.time(), algs)
    finally:
        engine.dispose()
    if not rows:
        which = f" for {', '.join(algs)}" if algs else ""
        raise UserError(f"no published signing key{which}", "run `sts keys rotate` (or start the broker once) to create the keys first")
    jwks = {"keys": [dict(r.public_jwk) for r in rows]}
    document = json.dumps(jwks, indent=2) + "\n"
    keys = [{"kid": r.kid, "alg": r.alg, "state": r.state, "not_after": r.not_after} for r in rows]
    if out is not None:
        try:
            tmp = out.with_name(out.name + ".tmp")
            tmp.write_text(document, encoding="utf-8")
            os.replace(tmp, out)
        except OSError as exc:
            raise UserError(f"cannot write {out} ({exc.strerror or type(exc).__name__})", "choose a writable path for --out") from None
    click.echo(ROTATION_WARNING, err=True)
    if as_json:
        click.echo(json.dumps({"jwks": jwks, "keys": keys, "out": str(out) if out is not None else None,
                               "warning": ROTATION_WARNING}, indent=2))
    elif out is None:
        click.echo(document, nl=False)
    else:
        summary = ", ".join(f"{k['alg']} {k['state']} {k['kid']} (until {_when(k['not_after'])})" for k in keys)
        click.echo(f"wrote {len(keys)} key(s) to {out}: {summary}")
