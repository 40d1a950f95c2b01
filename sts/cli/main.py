"""The ``sts`` command line for platform teams.

Human-readable output by default and ``--json`` for machines on every command that reports
something. Exit codes: 0 success, 1 a check failed (config problems, unready), 2 usage errors.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from sts.cli import devtools


def emit(data: Any, as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human)


def _settings(**overrides: Any) -> Any:
    from sts.settings import Settings

    return Settings(**{k: v for k, v in overrides.items() if v is not None})


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="workload-sts")
def main() -> None:
    """Workload token broker: an OAuth 2.0 Security Token Service (RFC 8693)."""


# --- serve -----------------------------------------------------------------------------------
@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), help="trust configuration (STS_CONFIG)")
@click.option("--host", help="bind address (STS_HOST, default 127.0.0.1)")
@click.option("--port", type=int, help="port (STS_PORT, default 8080)")
@click.option("--workers", type=int, help="worker processes (STS_WORKERS, default 1)")
@click.option("--database-url", help="SQLAlchemy URL (STS_DATABASE_URL)")
@click.option("--dev", is_flag=True, default=None, help="dev mode: loopback http issuers and a generated KEK")
@click.option("--migrate", is_flag=True, help="upgrade the database schema before starting")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="serve HTTPS with this certificate chain, PEM (STS_TLS_CERT)")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="private key of --tls-cert, PEM (STS_TLS_KEY)")
@click.option("--tls-client-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="extra CAs for optional TLS client certificates, PEM; trust domains' X.509 authorities are added automatically (STS_TLS_CLIENT_CA)")
def serve(config: Path | None, host: str | None, port: int | None, workers: int | None, database_url: str | None, dev: bool | None, migrate: bool,
          tls_cert: Path | None = None, tls_key: Path | None = None, tls_client_ca: Path | None = None) -> None:
    """Run the broker (uvicorn, HTTP/1.1; HTTPS with optional client certificates given --tls-cert and --tls-key)."""
    import uvicorn

    from sts.app import StartupError, create_app
    from sts.http.halfclose import uvicorn_options
    from sts.logs import configure_logging
    from sts.settings import SettingsError

    overrides = {"config": config, "host": host, "port": port, "workers": workers, "database_url": database_url, "dev_mode": dev,
                 "tls_cert": tls_cert, "tls_key": tls_key, "tls_client_ca": tls_client_ca}
    settings = _settings(**overrides)
    configure_logging(settings.log_level)
    tls: dict[str, Any] = {}
    if settings.tls_cert is not None and settings.tls_key is not None:
        import ssl

        from sts.spiffe.tls import uvicorn_tls_options

        try:
            tls = uvicorn_tls_options(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            click.echo(f"sts: cannot start: TLS certificate, key or client CA unusable ({exc})", err=True)
            sys.exit(1)
    if migrate:
        from sts.store import migrate as migrations

        migrations.upgrade(settings.database_url)
    try:
        if settings.workers > 1:
            # Fail fast in the parent on a bad configuration instead of in every worker, then
            # hand the settings to the worker processes through their environment.
            create_app(settings)
            for key, value in overrides.items():
                if value is not None:
                    os.environ[f"STS_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
            from sts.cli.workers import run_workers

            # SIGHUP reloads the configuration in every worker, without restarting them.
            run_workers("sts.app:app_from_env", workers=settings.workers, host=settings.host, port=settings.port,
                        log_config=None, access_log=settings.access_log, proxy_headers=False, server_header=False,
                        **uvicorn_options(), **tls)
        else:
            app = create_app(settings)
            uvicorn.run(app, host=settings.host, port=settings.port, log_config=None,
                        access_log=settings.access_log, proxy_headers=False, server_header=False,
                        **uvicorn_options(), **tls)
    except (StartupError, SettingsError) as exc:
        click.echo(f"sts: cannot start: {exc}", err=True)
        sys.exit(1)


# --- init ------------------------------------------------------------------------------------
@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--issuer", help="the broker's issuer URL (default https://sts.example.com; with --dev http://127.0.0.1:8080)")
@click.option("--dev", is_flag=True, help="also create a local dev issuer key to mint test subject tokens")
@click.option("--force", is_flag=True, help="overwrite existing files")
@click.option("--json", "as_json", is_flag=True)
def init(directory: Path, issuer: str | None, dev: bool, force: bool, as_json: bool) -> None:
    """Create a starter configuration and a key-encryption key in DIRECTORY."""
    issuer = issuer or ("http://127.0.0.1:8080" if dev else "https://sts.example.com")
    created = devtools.init_directory(directory, issuer=issuer, dev=dev, force=force)
    human = "\n".join([f"created {p}" for p in created] + [
        "",
        "next steps:",
        f"  export STS_KEK_FILE={directory / 'kek'}",
        f"  sts config check {directory / 'sts.yaml'}",
        "  sts db upgrade",
        f"  sts serve --config {directory / 'sts.yaml'}",
    ])
    emit({"created": [str(p) for p in created]}, as_json, human)


# --- db --------------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--database-url")
@click.option("--revision", default="head", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def db_upgrade(database_url: str | None, revision: str, as_json: bool) -> None:
    """Upgrade the schema (safe to run from several replicas at once)."""
    from sts.store import migrate

    url = _settings(database_url=database_url).database_url
    before = migrate.current(url)
    migrate.upgrade(url, revision)
    after = migrate.current(url)
    emit({"from": before, "to": after}, as_json, f"database upgraded: {before or '(empty)'} -> {after}")


@db.command("current")
@click.option("--database-url")
@click.option("--json", "as_json", is_flag=True)
def db_current(database_url: str | None, as_json: bool) -> None:
    """Show the schema revision; exit 1 when it is not the latest."""
    from sts.store import migrate

    url = _settings(database_url=database_url).database_url
    current, head = migrate.current(url), migrate.head()
    emit({"current": current, "head": head, "up_to_date": current == head}, as_json,
         f"current: {current or '(empty)'}\nhead:    {head}" + ("" if current == head else "\nrun `sts db upgrade`"))
    sys.exit(0 if current == head else 1)


# --- config ----------------------------------------------------------------------------------
@main.group()
def config() -> None:
    """Trust configuration."""


@config.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def config_check(path: Path, as_json: bool) -> None:
    """Validate PATH and report every problem at once, with its location. Exit 1 on problems."""
    from sts.config.loader import check_config

    problems = check_config(path)
    data = {"path": str(path), "ok": not problems, "problems": [{"location": p.location, "message": p.message} for p in problems]}
    human = f"{path}: ok" if not problems else "\n".join(f"{path}: {p.location}: {p.message}" for p in problems) + f"\n{len(problems)} problem(s)"
    emit(data, as_json, human)
    sys.exit(0 if not problems else 1)


# --- keys ------------------------------------------------------------------------------------
def _keyring() -> Any:
    from sts.config.loader import load_config
    from sts.settings import load_kek
    from sts.store.db import make_engine
    from sts.store.keys import KeyRepository
    from sts.tokens.keyring import KeyEncryptor, KeyRing

    settings = _settings()
    max_lifetime = 3600
    if settings.config.exists():
        max_lifetime = load_config(settings.config).config.tokens.max_lifetime
    engine = make_engine(settings.database_url)
    return KeyRing(KeyRepository(engine), KeyEncryptor(load_kek(settings)),
                   key_lifetime=settings.signing_key_lifetime, max_token_lifetime=max_lifetime)


@main.group()
def keys() -> None:
    """Signing keys (stored encrypted in the database)."""


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
def keys_list(as_json: bool) -> None:
    """List signing keys and their state."""
    from sts.store.db import make_engine
    from sts.store.keys import KeyRepository

    rows = KeyRepository(make_engine(_settings().database_url)).list()
    now = time.time()

    def when(t: float | None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"

    data = [{"kid": r.kid, "alg": r.alg, "state": r.state, "created_at": r.created_at, "activated_at": r.activated_at,
             "not_after": r.not_after, "publish_until": r.publish_until, "published": r.state != "retired" or (r.publish_until or 0) > now}
            for r in rows]
    lines = [f"{'KID':<44} {'ALG':<6} {'STATE':<8} {'NOT AFTER':<21} PUBLISHED"]
    lines += [f"{d['kid']:<44} {d['alg']:<6} {d['state']:<8} {when(d['not_after']):<21} {'yes' if d['published'] else 'no'}" for d in data]
    emit(data, as_json, "\n".join(lines))


@keys.command("rotate")
@click.option("--alg", "algs", multiple=True, help="algorithm to rotate (default: every algorithm with an active key)")
@click.option("--json", "as_json", is_flag=True)
def keys_rotate(algs: tuple[str, ...], as_json: bool) -> None:
    """Promote the published next key to active and publish a new next key."""
    ring = _keyring()
    ring.refresh()
    targets = list(algs) or sorted({r.alg for r in ring.rows() if r.state == "active"})
    result = {alg: ring.rotate(alg) for alg in targets}
    emit(result, as_json, "\n".join(f"{alg}: now signing with {kid}" if kid else f"{alg}: not rotated (no next key yet, or another replica rotated)" for alg, kid in result.items()))


# --- clients ---------------------------------------------------------------------------------
@main.group()
def clients() -> None:
    """Registered clients."""


@clients.command("secret")
@click.option("--json", "as_json", is_flag=True)
def clients_secret(as_json: bool) -> None:
    """Generate a client secret and the secret_sha256 to put in the configuration."""
    import hashlib
    import secrets

    secret = secrets.token_urlsafe(32)
    digest = hashlib.sha256(secret.encode()).hexdigest()
    emit({"client_secret": secret, "secret_sha256": digest}, as_json,
         f"client_secret: {secret}\nsecret_sha256: {digest}\n(give the secret to the client; put only secret_sha256 in the configuration)")


# --- audit -----------------------------------------------------------------------------------
@main.group()
def audit() -> None:
    """Audit records."""


@audit.command("list")
@click.option("--limit", default=20, show_default=True)
@click.option("--outcome", type=click.Choice(["issued", "denied", "error"]))
@click.option("--identity")
@click.option("--json", "as_json", is_flag=True)
def audit_list(limit: int, outcome: str | None, identity: str | None, as_json: bool) -> None:
    """Show the most recent audit records."""
    from sts.store.db import make_engine
    from sts.store.queries import recent_audit

    rows = recent_audit(make_engine(_settings().database_url), limit=limit, outcome=outcome, identity=identity)
    lines = [f"{time.strftime('%H:%M:%S', time.gmtime(r['time']))} {r['outcome']:<7} {r.get('reason') or '-':<28} "
             f"{r.get('identity') or '-'} -> {r.get('granted_target') or ','.join(r.get('requested_targets') or []) or '-'}" for r in rows]
    emit(rows, as_json, "\n".join(lines) or "(no records)")


main.add_command(devtools.dev)

try:  # the conformance kit ships in the same distribution
    from conformance.cli import conformance_command

    main.add_command(conformance_command, name="conformance")
except ImportError:  # pragma: no cover - only when installed without the kit
    pass


if __name__ == "__main__":  # pragma: no cover
    main()
