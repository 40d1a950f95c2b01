"""The ``sts`` command line for platform teams.

Human-readable output by default and ``--json`` for machines on every command that reports
something. Exit codes: 0 success, 1 a check failed (config problems, schema not at head),
2 a user error (one line ``sts: <problem>; <fix>``, see ``sts.cli.errors``), 3 a configuration
change widens trust (``sts config diff``, see ``sts.cli.config_review``), 70 a bug.
Commands that only read never create a database: they open an existing, migrated one or say
how to make it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from sts.cli import approvals, auditquery, config_review, devtools, explain, jwks_export, lifecycle, probe
from sts.cli.errors import ReportingGroup, UserError


def emit(data: Any, as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human)


def _settings(**overrides: Any) -> Any:
    from sts.settings import load_settings

    return load_settings(**overrides)


def _open_database(database_url: str) -> Any:
    """An engine on the existing, migrated database; never creates one (``DatabaseMissing``,
    ``SchemaNotCurrent`` otherwise, each reported as one line with its fix)."""
    from sts.store import migrate
    from sts.store.db import make_engine

    engine = make_engine(database_url, create=False)
    try:
        migrate.require_current(engine, database_url)
    except BaseException:
        engine.dispose()
        raise
    return engine


@click.group(cls=ReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="workload-sts")
@click.option("--debug", is_flag=True, envvar="STS_DEBUG", help="show the Python traceback of an error (STS_DEBUG=1)")
def main(debug: bool) -> None:
    """Workload token broker: an OAuth 2.0 Security Token Service (RFC 8693)."""


# --- serve -----------------------------------------------------------------------------------
@main.command()
@click.option("--config", "config", type=click.Path(path_type=Path), help="trust configuration file or directory (STS_CONFIG)")
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
    # sts serve owns prometheus_client's multiprocess directory (docs/metrics.md): one inherited
    # from the environment must not be used, and prometheus_client reads it when first imported.
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    import uvicorn

    from sts.app import create_app
    from sts.http.halfclose import uvicorn_options
    from sts.logs import configure_logging

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
            raise UserError(f"cannot start: TLS certificate, key or client CA unusable ({exc})",
                            "check STS_TLS_CERT, STS_TLS_KEY and STS_TLS_CLIENT_CA") from None
    if migrate:
        from sts.store import migrate as migrations

        migrations.upgrade(settings.database_url)
    # Checked here, before uvicorn, so that a missing or unmigrated database is one line and
    # exit 2 rather than a failed lifespan in a log, and a missing SQLite file is not created.
    _open_database(settings.database_url).dispose()
    _check_admin_port(settings)
    if settings.workers > 1:
        # Fail fast in the parent on a bad configuration or KEK instead of in every worker, then
        # hand the settings to the worker processes through their environment.
        # The KEK is checked here too: uvicorn would restart workers that exit at start.
        broker = create_app(settings).state.broker
        broker.preflight()
        broker.engine.dispose()
        for key, value in overrides.items():
            if value is not None:
                os.environ[f"STS_{key.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
        from sts.cli.workers import run_workers

        metrics_dir, metrics_server = _worker_metrics(settings) if settings.metrics_port is not None else (None, None)
        try:
            # SIGHUP reloads the configuration in every worker, without restarting them.
            run_workers("sts.app:app_from_env", workers=settings.workers, host=settings.host, port=settings.port,
                        log_config=None, access_log=settings.access_log, proxy_headers=False, server_header=False,
                        **uvicorn_options(tls))
        finally:
            _stop_worker_metrics(metrics_dir, metrics_server)
    else:
        app = create_app(settings)
        app.state.broker.preflight()  # a wrong KEK: one line and exit 2, before listening
        uvicorn.run(app, host=settings.host, port=settings.port, log_config=None,
                    access_log=settings.access_log, proxy_headers=False, server_header=False,
                    **uvicorn_options(tls))


def _check_admin_port(settings: Any) -> None:
    """The admin API's address (docs/admin-api.md) is free: one line and exit 2 if not."""
    if settings.admin_listen is None:
        return
    from sts.admin.auth import AdminSetupError
    from sts.admin.listener import check_port

    try:
        check_port(settings)
    except AdminSetupError as exc:
        raise UserError(f"cannot start: {exc}", exc.fix) from None


def _worker_metrics(settings: Any) -> tuple[str, Any]:
    """Metrics of several workers (docs/metrics.md): a fresh private directory for
    prometheus_client's multiprocess mode, set before the workers start, and, given a separate
    metrics port, its listener in this supervising process, which sums every worker's series."""
    import tempfile

    from sts.ops.metrics import MULTIPROC_ENV, multiprocess_registry, serve_metrics

    directory = tempfile.mkdtemp(prefix="sts-metrics-")  # mode 0700: only this user reads it
    os.environ[MULTIPROC_ENV] = directory
    server = None
    if settings.metrics_port:
        try:
            server = serve_metrics(multiprocess_registry(directory), settings.metrics_host or settings.host, settings.metrics_port)
        except OSError as exc:
            _stop_worker_metrics(directory, None)
            raise UserError(f"cannot start: metrics port {settings.metrics_port}: {exc.strerror}",
                            "choose a free port with STS_METRICS_PORT") from None
    return directory, server


def _stop_worker_metrics(directory: str | None, server: Any) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()
    if directory is not None:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)


# --- init ------------------------------------------------------------------------------------
@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--issuer", help="the broker's issuer URL (default https://sts.example.com; with --dev http://127.0.0.1:8080)")
@click.option("--dev", is_flag=True, help="also create a local dev issuer key to mint test subject tokens")
@click.option("--force", is_flag=True, help="write into an existing, non-empty DIRECTORY and overwrite its files (including the KEK)")
@click.option("--json", "as_json", is_flag=True)
def init(directory: Path, issuer: str | None, dev: bool, force: bool, as_json: bool) -> None:
    """Create a starter configuration and a key-encryption key in DIRECTORY (a new or empty one)."""
    if not force and directory.is_dir() and any(directory.iterdir()):
        # Overwriting would replace the KEK that encrypts the stored signing keys.
        raise UserError(f"{directory} already exists and is not empty",
                        "choose a new directory, or pass --force to overwrite its files (a new KEK cannot open keys sealed under the old one)")
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
    """Show the schema revision; exit 1 when it is not the latest (or there is no database)."""
    from sts.store import migrate
    from sts.store.errors import DatabaseMissing

    url = _settings(database_url=database_url).database_url
    head = migrate.head()
    try:
        current = migrate.current(url, create=False)
        exists, state = True, f"current: {current or '(empty)'}"
    except DatabaseMissing as exc:
        current, exists, state = None, False, str(exc)
    emit({"current": current, "head": head, "up_to_date": current == head, "exists": exists}, as_json,
         f"{state}\nhead:    {head}" + ("" if current == head else "\nrun `sts db upgrade`"))
    sys.exit(0 if current == head else 1)


# --- config ----------------------------------------------------------------------------------
@main.group()
def config() -> None:
    """Trust configuration."""


@config.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--for-production", is_flag=True,
              help="also report, as errors, what `sts serve` refuses outside dev mode: in the file, and in this environment's STS_* settings (KEK, dev mode)")
@click.option("--strict", is_flag=True, help="exit 1 on warnings too")
@click.option("--json", "as_json", is_flag=True)
def config_check(path: Path, for_production: bool, strict: bool, as_json: bool) -> None:
    """Validate PATH and report every problem at once, with its line and column.

    Errors and warnings (an issuer URL that is a near miss of a well-known one). Exit 1 on
    errors (and with --strict on warnings), 0 otherwise.
    """
    from sts.config.loader import check_config

    problems = [
        {"file": str(path / p.file) if p.file else str(path), "line": p.line, "column": p.column, "path": p.path or p.location,
         "message": p.message, "severity": p.severity, "location": p.location}
        for p in check_config(path, warnings=True, for_production=for_production)
    ]
    if for_production:
        problems += _production_settings_problems()
    errors = sum(p["severity"] == "error" for p in problems)
    warnings = len(problems) - errors
    data = {"file": str(path), "ok": errors == 0, "errors": errors, "warnings": warnings, "problems": problems}
    if not problems:
        human = f"{path}: ok" + (" (for production)" if for_production else "")
    else:
        counts = [f"{n} {word}{'s' if n != 1 else ''}" for n, word in ((errors, "error"), (warnings, "warning")) if n]
        human = "\n".join(_problem_line(p) for p in problems) + "\n" + ", ".join(counts)
    emit(data, as_json, human)
    sys.exit(1 if errors or (strict and warnings) else 0)


def _problem_line(p: dict[str, Any]) -> str:
    """``FILE:LINE:COLUMN: SEVERITY: PATH: MESSAGE``, the form editors and CI annotations read."""
    where = p["file"] or "(environment)"
    if p["line"] is not None:
        where += f":{p['line']}:{p['column']}"
    subject = f"{p['path']}: " if p["path"] and p["path"] != "(file)" else ""
    return f"{where}: {p['severity']}: {subject}{p['message']}"


def _production_settings_problems() -> list[dict[str, Any]]:
    """What ``sts serve`` would refuse (errors) or advise against (warnings) in this
    environment's settings outside dev mode. Reads the KEK but never generates one."""
    from sts.settings import SettingsError, load_kek, load_settings
    from sts.store.db import database_backend

    def problem(name: str, message: str, severity: str = "error") -> dict[str, Any]:
        return {"file": None, "line": None, "column": None, "path": name, "message": message,
                "severity": severity, "location": name}

    def text(exc: SettingsError) -> str:
        return f"{exc}; {exc.fix}" if getattr(exc, "fix", None) else str(exc)

    try:
        settings = load_settings()
    except SettingsError as exc:
        return [problem("(settings)", text(exc))]
    found: list[dict[str, Any]] = []
    if settings.dev_mode:
        found.append(problem("STS_DEV_MODE", "dev mode is on: it admits plain-http issuers and generates a KEK; production runs without it"))
    try:
        load_kek(settings.model_copy(update={"dev_mode": False}))
    except SettingsError as exc:
        name = "STS_KEK" if settings.kek is not None else "STS_KEK_FILE" if settings.kek_file is not None else "STS_KEK/STS_KEK_FILE"
        found.append(problem(name, text(exc)))
    if settings.workers > 1 and database_backend(settings.database_url) == "sqlite":
        found.append(problem("STS_DATABASE_URL", f"SQLite with {settings.workers} workers: one file serializes every write; use PostgreSQL for several processes or replicas", "warning"))
    return found


# --- keys ------------------------------------------------------------------------------------
def _check_failed(problem: str, fix: str) -> UserError:
    """A refusal that is not the operator's input error (the fleet is not ready): exit 1."""
    error = UserError(problem, fix)
    error.exit_code = 1
    return error


def _configured_algorithms(settings: Any) -> tuple[frozenset[str], int]:
    """The algorithms the configuration signs with, and its longest token lifetime."""
    from sts.config.loader import load_config
    from sts.runtime import signing_algorithms

    if not settings.config.exists():
        raise UserError(f"no configuration at {settings.config}",
                        "set STS_CONFIG to the broker's configuration file (it says which algorithms the broker signs with)")
    loaded = load_config(settings.config)
    return signing_algorithms(loaded.config), loaded.config.tokens.max_lifetime


def _keyring(settings: Any, engine: Any, *, max_token_lifetime: int = 3600) -> tuple[Any, Any]:
    """A key ring for a command that may write keys, and the KEKs it holds; refused before
    anything is written when the KEK opens none of the stored keys."""
    from sts.settings import load_keks
    from sts.store.keys import KeyRepository
    from sts.store.replicas import ReplicaRepository
    from sts.tokens.keyring import KekMismatch, KeyEncryptor, KeyRing

    material = load_keks(settings)
    ring = KeyRing(KeyRepository(engine), KeyEncryptor.from_material(material), key_lifetime=settings.signing_key_lifetime,
                   max_token_lifetime=max_token_lifetime, replicas=ReplicaRepository(engine))
    try:
        ring.require_kek(material.origin)
    except KekMismatch as exc:
        raise UserError(str(exc), exc.fix) from None
    return ring, material


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"


@main.group()
def keys() -> None:
    """Signing keys (stored encrypted in the database)."""


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
def keys_list(as_json: bool) -> None:
    """List signing keys, their state and whether the configured KEK opens them."""
    from sts.settings import SettingsError, load_keks
    from sts.store.keys import KeyRepository
    from sts.tokens.keyring import KeyEncryptor

    settings = _settings()
    rows = KeyRepository(_open_database(settings.database_url)).list()
    now = time.time()
    encryptor = None
    try:
        material = load_keks(settings)
        if material.pending_dev_file is None:  # never invent a dev KEK just to list keys
            encryptor = KeyEncryptor.from_material(material)
    except SettingsError:
        pass  # listing needs no KEK; the OPENS column then says "-"

    data = [{"kid": r.kid, "alg": r.alg, "state": r.state, "created_at": r.created_at, "activated_at": r.activated_at,
             "not_after": r.not_after, "publish_until": r.publish_until, "published": r.state != "retired" or (r.publish_until or 0) > now,
             "kek_id": r.kek_id, "opens": None if encryptor is None else encryptor.opens(r)}
            for r in rows]
    opens = {None: "-", True: "yes", False: "no"}
    lines = [f"{'KID':<44} {'ALG':<6} {'STATE':<8} {'NOT AFTER':<21} {'PUBLISHED':<9} {'KEK ID':<16} OPENS"]
    lines += [f"{d['kid']:<44} {d['alg']:<6} {d['state']:<8} {_when(d['not_after']):<21} {'yes' if d['published'] else 'no':<9} "
              f"{d['kek_id']:<16} {opens[d['opens']]}" for d in data]
    if encryptor is not None and rows and not any(d["opens"] for d in data):
        lines.append("warning: the configured KEK opens none of these keys")
    emit(data, as_json, "\n".join(lines))


@keys.command("rotate")
@click.option("--alg", "algs", multiple=True, help="algorithm to rotate (default: every algorithm the configuration signs with)")
@click.option("--json", "as_json", is_flag=True)
def keys_rotate(algs: tuple[str, ...], as_json: bool) -> None:
    """Promote the published next key to active and publish a new next key.

    A next key is promoted only if this command opens it with its KEK and every running
    replica holds that KEK. Exit 1 when an algorithm could not be rotated."""
    from sts.settings import keep_dev_kek

    settings = _settings()
    engine = _open_database(settings.database_url)
    configured, max_lifetime = _configured_algorithms(settings)
    for alg in algs:
        if alg not in configured:
            raise UserError(f"--alg {alg}: the configuration {settings.config} signs with {', '.join(sorted(configured))} only "
                            "(nothing was changed)", "rotate one of those, or add the algorithm to the configuration first")
    ring, material = _keyring(settings, engine, max_token_lifetime=max_lifetime)
    keep_dev_kek(material)
    outcomes = [ring.rotate_alg(alg) for alg in (dict.fromkeys(algs) or sorted(configured))]

    def describe(o: Any) -> str:
        if o.promoted:
            text = f"{o.alg}: now signing with {o.promoted}"
        elif o.conflict:
            text = f"{o.alg}: not rotated (another replica rotated first)"
        elif o.created:
            text = f"{o.alg}: not rotated: there was no next key; created the missing keys {', '.join(o.created)}"
        else:
            text = f"{o.alg}: not rotated: " + "; ".join(o.blocked)
        if o.withdrawn:
            text += f"; withdrew next key {', '.join(o.withdrawn)} (no running replica can open it)"
        if o.new_next and not o.promoted:
            text += f"; published a new next key {o.new_next}: rotate again once relying parties have fetched it"
        return text

    data = {o.alg: {"promoted": o.promoted, "withdrawn": list(o.withdrawn), "new_next": o.new_next,
                    "blocked": list(o.blocked), "conflict": o.conflict, "created": list(o.created)} for o in outcomes}
    emit(data, as_json, "\n".join(describe(o) for o in outcomes))
    sys.exit(1 if any(o.blocked and not o.promoted for o in outcomes) else 0)


@keys.command("rewrap")
@click.option("--dry-run", is_flag=True, help="say what would be re-encrypted, change nothing")
@click.option("--json", "as_json", is_flag=True)
def keys_rewrap(dry_run: bool, as_json: bool) -> None:
    """Re-encrypt every private key under the current KEK, in one transaction.

    The current KEK is STS_KEK or STS_KEK_FILE; keys sealed under the old one open with
    STS_KEK_PREVIOUS or STS_KEK_PREVIOUS_FILE. Every running replica must hold the new KEK
    (as current or previous) first: see "Rotating the KEK" in docs/security.md."""
    settings = _settings()
    ring, _ = _keyring(settings, _open_database(settings.database_url))
    outcome = ring.rewrap(dry_run=dry_run)
    plan = outcome.plan
    kek_id = ring.current_kek_id
    if plan.unopenable:
        raise UserError(f"signing key {', '.join(plan.unopenable)} opens with neither the current nor the previous KEK (nothing was changed)",
                        "set STS_KEK_PREVIOUS or STS_KEK_PREVIOUS_FILE to the KEK it is sealed under")
    if plan.lagging_replicas:
        raise _check_failed(f"replica {', '.join(plan.lagging_replicas)} does not hold the new KEK (KEK id {kek_id}) (nothing was changed)",
                            "restart every replica with the new KEK as STS_KEK and the old one as STS_KEK_PREVIOUS first")
    if outcome.conflict:
        raise _check_failed("the signing keys changed while they were being re-encrypted (nothing was changed)",
                            "run `sts keys rewrap` again")
    data = {"kek_id": kek_id, "rewrapped": list(plan.reseal), "already_current": plan.already_current, "dry_run": dry_run}
    if not plan.reseal:
        human = f"every signing key is already sealed under KEK id {kek_id}"
    elif dry_run:
        human = f"would re-encrypt {len(plan.reseal)} signing key(s) under KEK id {kek_id}: {', '.join(plan.reseal)}"
    else:
        human = (f"re-encrypted {len(plan.reseal)} signing key(s) under KEK id {kek_id}; "
                 "restart the replicas with this KEK only, then destroy the previous one")
    emit(data, as_json, human)


@keys.command("replicas")
@click.option("--json", "as_json", is_flag=True)
def keys_replicas(as_json: bool) -> None:
    """Running brokers and the KEK ids each one holds (as they last reported)."""
    from sts.store.replicas import ReplicaRepository

    records = ReplicaRepository(_open_database(_settings().database_url)).list()
    now = time.time()
    data = [{"replica_id": r.replica_id, "kek_ids": sorted(r.kek_ids), "started_at": r.started_at, "last_seen": r.last_seen,
             "fresh": r.expires_at > now} for r in records]
    lines = [f"{'REPLICA':<48} {'LAST SEEN':<21} {'FRESH':<6} KEK IDS"]
    lines += [f"{d['replica_id']:<48} {_when(d['last_seen']):<21} {'yes' if d['fresh'] else 'no':<6} {' '.join(d['kek_ids'])}" for d in data]
    emit(data, as_json, "\n".join(lines) if data else "(no replica has reported)")


# `sts keys export-jwks` (sts/cli/jwks_export.py): the JWKS for providers that take an upload.
keys.add_command(jwks_export.export_jwks)


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


@audit.command("prune")
@click.option("--dry-run", is_flag=True, help="count what would be deleted, change nothing")
@click.option("--database-url", help="SQLAlchemy URL (STS_DATABASE_URL)")
@click.option("--json", "as_json", is_flag=True)
def audit_prune(dry_run: bool, database_url: str | None, as_json: bool) -> None:
    """Delete audit records older than STS_AUDIT_RETENTION_DAYS and issued-token rows expired
    more than STS_ISSUED_TOKEN_RETENTION_DAYS ago, in small batches. Exit 1 if another replica
    is pruning right now."""
    from sts.ops.retention import Pruner

    settings = _settings(database_url=database_url)
    engine = _open_database(settings.database_url)
    try:
        report = Pruner.from_settings(engine, settings).run_once(dry_run=dry_run)
    finally:
        engine.dispose()

    def when(t: float | None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t is not None else ""

    verb = "would delete" if dry_run else "deleted"
    lines = [
        f"audit records: {verb} {report.audit_records} older than {when(report.audit_before)}" if report.audit_before is not None
        else "audit records: kept forever (STS_AUDIT_RETENTION_DAYS=0)",
        f"issued tokens: {verb} {report.issued_tokens} expired before {when(report.issued_expired_before)}"
        if report.issued_expired_before is not None else "issued tokens: kept forever (STS_ISSUED_TOKEN_RETENTION_DAYS=0)",
    ]
    if report.skipped:
        lines = ["another replica is pruning right now; nothing was deleted (try again later)"]
    emit(report.as_dict(), as_json, "\n".join(lines))
    sys.exit(1 if report.skipped else 0)


@audit.command("export")
@click.option("--since", help="first record time, inclusive: ISO 8601 (2026-11-01, 2026-11-01T08:00:00Z) or epoch seconds")
@click.option("--until", help="end time, exclusive, in the same forms")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write to this new file instead of standard output")
@click.option("--database-url", help="SQLAlchemy URL (STS_DATABASE_URL)")
@click.option("--json", "as_json", is_flag=True, help="with --out: print the summary as JSON")
def audit_export(since: str | None, until: str | None, out: Path | None, database_url: str | None, as_json: bool) -> None:
    """Write audit records as JSON Lines, one record per line, oldest first (for archiving
    before records are pruned)."""
    from sts.ops.archive import BadTime, parse_time, write_jsonl
    from sts.store.retention import audit_between

    try:
        start = parse_time(since) if since is not None else None
        end = parse_time(until) if until is not None else None
    except BadTime as exc:
        raise UserError(str(exc), "give ISO 8601 (2026-12-01, 2026-12-01T08:00:00Z) or epoch seconds") from None
    if start is not None and end is not None and start >= end:
        raise UserError("--since is not before --until", "give a --since earlier than --until")
    if out is not None and out.exists():
        raise UserError(f"{out} already exists", "choose a new file name (an archive is never overwritten)")
    engine = _open_database(_settings(database_url=database_url).database_url)
    try:
        with engine.connect() as conn:
            records = audit_between(conn, start, end)
            if out is None:
                write_jsonl(records, sys.stdout)
                return
            # Written beside the target and renamed at the end: a file under the final name is
            # always a complete export. Audit records name identities: owner-only permissions.
            partial = out.with_name(out.name + ".partial")
            with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as f:
                n = write_jsonl(records, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, out)
    finally:
        engine.dispose()
    emit({"out": str(out), "records": n, "since": start, "until": end}, as_json, f"exported {n} audit records to {out}")


main.add_command(devtools.dev)
for _command in config_review.COMMANDS:
    config.add_command(_command)
audit.add_command(auditquery.audit_list)
main.add_command(auditquery.inventory)
main.add_command(lifecycle.kill)
main.add_command(lifecycle.revoke)
main.add_command(approvals.approvals)
main.add_command(probe.probe)
main.add_command(explain.explain)

try:  # the conformance kit ships in the same distribution
    from conformance.cli import conformance_command

    main.add_command(conformance_command, name="conformance")
except ImportError:  # pragma: no cover - only when installed without the kit
    pass


if __name__ == "__main__":  # pragma: no cover
    main()
