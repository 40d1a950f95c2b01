"""The admin API's resources: each handler is a thin adapter over a function that already
exists (the command line calls the same ones), run off the event loop when it reads the
database, bounded in time and in size."""

from __future__ import annotations

import asyncio
import json
import re
import time
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from sts import jose
from sts.admin.app import PREFIX, AdminCall, AdminRefusal, Operation, Param, Route, bad_request, unavailable
from sts.admin.views import issuer_keys, key_schedule, served_by
from sts.audit import DATABASE_WAIT_SECONDS
from sts.config.sources import files_of_document
from sts.explain.record import records_for_request
from sts.explain.run import ExplainInput, explain_exchange
from sts.ops.archive import BadTime, export_line, parse_time
from sts.ops.inventory import inventory as build_inventory
from sts.ops.inventory import unused as unused_findings
from sts.protocol import TOKEN_TYPE_JWT
from sts.store.config_versions import AmbiguousVersion, ConfigVersionRepository, UnknownVersion
from sts.store.keys import KeyRepository
from sts.store.queries import AuditFilter, audit_after, last_audit_id, list_audit
from sts.store.usage import read_usage

REQUEST_ID: Final = r"[A-Za-z0-9._:-]{1,128}"
# An explain request: a token (or two) and the parameters of an exchange, as JSON.
MAX_EXPLAIN_BODY: Final = 256 * 1024
_EXPLAIN_MEMBERS: Final = frozenset({"subject_token", "subject_token_type", "actor_token", "actor_token_type", "audience",
                                     "resource", "scope", "client_id", "jwks"})


async def _db(call: AdminCall, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn`` on a worker thread, at most ``DATABASE_WAIT_SECONDS``; a slow or unreachable
    database is a 503, never a hung request."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kwargs), DATABASE_WAIT_SECONDS)
    except TimeoutError:
        raise unavailable("database wait timed out") from None


# --- OpenAPI ------------------------------------------------------------------------------------
@cache
def openapi_yaml() -> bytes:
    """The admin API's OpenAPI document (kept equal to docs/admin-openapi.yaml by a test)."""
    return resources.files("sts.admin").joinpath("openapi.yaml").read_bytes()


@cache
def _openapi_document() -> dict[str, Any]:
    return dict(yaml.safe_load(openapi_yaml()))


async def openapi_json(call: AdminCall) -> Any:
    return _openapi_document()


async def openapi_yaml_endpoint(call: AdminCall) -> bytes:
    return openapi_yaml()


# --- keys ---------------------------------------------------------------------------------------
async def signing_keys(call: AdminCall) -> Any:
    broker = call.broker
    rows = await _db(call, KeyRepository(broker.engine).list)
    body = key_schedule(rows, keyring=broker.keyring, algorithms=broker.runtime().signing_algorithms,
                        key_lifetime=float(broker.settings.signing_key_lifetime), now=time.time())
    return {"served_by": served_by(call.broker.replica_id), **body}


async def issuers(call: AdminCall) -> Any:
    broker = call.broker
    body = issuer_keys(broker.runtime(), broker.jwks, broker.bundles, now=time.time())
    return {"served_by": served_by(broker.replica_id), **body}


# --- explain ------------------------------------------------------------------------------------
async def explain_request_id(call: AdminCall) -> Any:
    request_id = call.path_params["request_id"]
    if not re.fullmatch(REQUEST_ID, request_id):
        raise bad_request("admin_parameter_invalid", "The request id is malformed.", detail="path request_id")
    records = await _db(call, records_for_request, call.broker.engine, request_id, limit=call.query.get("limit", 10))
    if not records:
        raise AdminRefusal(404, "not_found", "No audit record has this request id.", reason="admin_request_id_unknown")
    return {"request_id": request_id, "records": [_record(r) for r in records]}


async def _json_body(call: AdminCall, limit: int) -> Any:
    content_type = call.request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise AdminRefusal(415, "unsupported_media_type", "The request body must be application/json.",
                           reason="admin_bad_content_type")
    body = b""
    async for chunk in call.request.stream():
        body += chunk
        if len(body) > limit:
            raise AdminRefusal(413, "request_too_large", "The request body is too large.", reason="admin_body_too_large")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("admin_body_malformed", "The request body is not a JSON object.") from None


def _strings(doc: dict[str, Any], name: str, *, many: bool, max_chars: int = 2048) -> tuple[str, ...]:
    value = doc.get(name)
    if value is None:
        return ()
    values = value if (many and isinstance(value, list)) else [value]
    if len(values) > 16 or not all(isinstance(v, str) and 0 < len(v) <= max_chars for v in values):
        raise bad_request("admin_body_invalid", f"The member {name} is malformed.", detail=f"member {name}")
    return tuple(values)


def _usable_jwks(doc: Any) -> bool:
    """As ``sts explain --jwks`` requires: a JWK Set holding at least one usable public key."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        return False
    try:
        return len(jose.parse_jwks(doc)) > 0
    except (jose.JOSEError, ValueError, TypeError):
        return False


def explain_input(doc: Any) -> tuple[ExplainInput, dict[str, Any] | None]:
    """The exchange to explain, from the posted JSON object (docs/admin-openapi.yaml)."""
    if not isinstance(doc, dict):
        raise bad_request("admin_body_malformed", "The request body is not a JSON object.")
    unknown = set(doc) - _EXPLAIN_MEMBERS
    if unknown:
        raise bad_request("admin_body_invalid", "The request body has a member this resource does not take.",
                          detail=f"member {sorted(unknown)[0][:64]!r}")
    subject = _strings(doc, "subject_token", many=False, max_chars=64 * 1024)
    if not subject:
        raise bad_request("admin_body_invalid", "The member subject_token is missing.", detail="member subject_token")
    actor = _strings(doc, "actor_token", many=False, max_chars=64 * 1024)
    jwks = doc.get("jwks")
    if jwks is not None and not _usable_jwks(jwks):
        raise bad_request("admin_body_invalid", "The member jwks is not a JWK Set with a usable public key.",
                          detail="member jwks")
    scope = _strings(doc, "scope", many=False)
    client = _strings(doc, "client_id", many=False, max_chars=256)
    return ExplainInput(
        subject_token=subject[0],
        audiences=_strings(doc, "audience", many=True),
        resources=_strings(doc, "resource", many=True),
        scope=scope[0] if scope else None,
        actor_token=actor[0] if actor else None,
        client_id=client[0] if client else None,
        subject_token_type=(_strings(doc, "subject_token_type", many=False, max_chars=256) or (TOKEN_TYPE_JWT,))[0],
        actor_token_type=(_strings(doc, "actor_token_type", many=False, max_chars=256) or (TOKEN_TYPE_JWT,))[0],
    ), jwks


async def explain_token(call: AdminCall) -> Any:
    """``sts explain`` against the configuration this broker serves: nothing is issued,
    written or spent (sts.explain). The posted tokens are never part of the answer."""
    broker = call.broker
    request, jwks = explain_input(await _json_body(call, MAX_EXPLAIN_BODY))
    report = await explain_exchange(broker.loaded_config, request, jwks=jwks, dev_mode=broker.settings.dev_mode,
                                    fetcher=broker.fetcher)
    return report


# --- configuration versions -----------------------------------------------------------------------
async def config_versions(call: AdminCall) -> Any:
    """``sts config history --json``, plus which version this process serves."""
    running = call.broker.runtime().version
    rows = await _db(call, ConfigVersionRepository(call.broker.engine).history, call.query.get("limit", 50))
    return {"served_by": served_by(call.broker.replica_id), "running": running,
            "versions": [dict(r.summary(), latest=i == 0, running=r.version == running) for i, r in enumerate(rows)]}


async def config_version(call: AdminCall) -> Any:
    """``sts config show VERSION --json``: the exact files of a stored version."""
    name = call.path_params["version"]
    if not re.fullmatch(r"[0-9a-fA-F]{4,64}", name):
        raise bad_request("admin_parameter_invalid", "The version is not 4 to 64 hex digits.", detail="path version")
    try:
        record = await _db(call, ConfigVersionRepository(call.broker.engine).get, name)
    except UnknownVersion:
        raise AdminRefusal(404, "not_found", "No stored configuration has this version.",
                           reason="admin_config_version_unknown") from None
    except AmbiguousVersion:
        raise bad_request("admin_config_version_ambiguous", "Several stored configurations start with this version.") from None
    files = files_of_document(record.document, record.kind, Path(record.source).name or "sts.yaml")
    return {**record.summary(), "running": record.version == call.broker.runtime().version, "files": dict(files)}


# --- audit queries --------------------------------------------------------------------------------
_DURATION: Final = re.compile(r"(\d{1,9})([smhdw])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# What `sts audit list` filters on, as query parameters (the same names, `client` for --client).
AUDIT_FILTERS: Final = ("request_id", "identity", "issuer", "client", "grant", "target", "outcome", "reason")
MAX_AUDIT_LIMIT: Final = 1000


def duration_seconds(text: str) -> int | None:
    """``15m``, ``2h``, ``7d``, ``2w`` (or ``90s``) in seconds, as ``sts audit list`` reads them."""
    match = _DURATION.fullmatch(text)
    return int(match.group(1)) * _UNITS[match.group(2)] if match else None


def moment(name: str, text: str, now: float) -> float:
    """A ``since``/``until`` value: a duration ago, ISO 8601 or epoch seconds (as the CLI)."""
    seconds = duration_seconds(text)
    if seconds is not None:
        return now - seconds
    try:
        return parse_time(text)
    except (BadTime, ValueError, OverflowError):
        raise bad_request("admin_parameter_invalid", f"The parameter {name} is not a time.", detail=f"parameter {name}") from None


def _record(row: dict[str, Any]) -> dict[str, Any]:
    # The fields and form of `sts audit list --json` (and `sts audit export`), one object each.
    return dict(json.loads(export_line(row)))


async def audit(call: AdminCall) -> Any:
    """``sts audit list --json`` with the same filters: the newest ``limit`` matches, newest
    first; or, with ``after_id``, the matches committed after that record id, oldest first
    (what ``--follow`` polls for)."""
    q = call.query
    now = time.time()
    since = moment("since", q["since"], now) if "since" in q else None
    until = moment("until", q["until"], now) if "until" in q else None
    if since is not None and until is not None and since >= until:
        raise bad_request("admin_parameter_invalid", "The parameter since is not before until.", detail="parameter since")
    where = AuditFilter(request_id=q.get("request_id"), identity=q.get("identity"), issuer=q.get("issuer"),
                        client_id=q.get("client"), grant=q.get("grant"), target=q.get("target"), outcome=q.get("outcome"),
                        reason=q.get("reason"), since=since, until=until)
    limit = q.get("limit", 50)
    after = q.get("after_id")

    def read() -> tuple[int, list[dict[str, Any]]]:
        with call.broker.engine.connect() as conn:
            top = last_audit_id(conn)
            rows = audit_after(conn, where, after, limit=limit) if after is not None else list_audit(conn, where, limit=limit)
        return top, rows

    top, rows = await _db(call, read)
    return {"last_id": top, "order": "oldest_first" if after is not None else "newest_first",
            "records": [_record(r) for r in rows]}


# --- inventory -------------------------------------------------------------------------------------
async def inventory(call: AdminCall) -> Any:
    """``sts inventory --json``: every workload identity seen, from the usage counters."""
    identity = call.query.get("identity")
    limit = call.query.get("limit", 1000)

    def read() -> list[Any]:
        with call.broker.engine.connect() as conn:
            return build_inventory(read_usage(conn, identity=identity))

    entries = await _db(call, read)
    return {"identities": [e.as_dict() for e in entries[:limit]], "total": len(entries), "truncated": len(entries) > limit}


async def inventory_unused(call: AdminCall) -> Any:
    """``sts inventory --unused WINDOW --json``, against the configuration this broker serves."""
    seconds = duration_seconds(call.query["window"])
    if seconds is None or not 0 < seconds <= 3650 * 86400:
        raise bad_request("admin_parameter_invalid", "The parameter window is not a duration.", detail="parameter window")
    loaded = call.broker.loaded_config
    now = time.time()
    since = now - seconds

    def read() -> tuple[list[Any], list[Any]]:
        with call.broker.engine.connect() as conn:
            return read_usage(conn, since=since), read_usage(conn)

    in_window, history = await _db(call, read)
    findings = unused_findings(loaded.config, in_window, history, days=seconds / 86400)
    return {"since": since, "until": now, "config_version": loaded.version,
            "counters_since": min((r.first_seen for r in history), default=None),
            "findings": [f.as_dict() for f in findings]}


def routes() -> list[Route]:
    """Every resource of the admin API (docs/admin-openapi.yaml describes each)."""
    limit = Param("limit", integer=True, low=1, high=50)
    return [
        Route(PREFIX + "/openapi.json", {"GET": Operation(openapi_json)}),
        Route(PREFIX + "/openapi.yaml", {"GET": Operation(openapi_yaml_endpoint, raw_content_type="application/yaml")}),
        Route(PREFIX + "/keys", {"GET": Operation(signing_keys)}),
        Route(PREFIX + "/issuers", {"GET": Operation(issuers)}),
        Route(PREFIX + "/explain", {"POST": Operation(explain_token)}),
        Route(PREFIX + "/explain/{request_id}", {"GET": Operation(explain_request_id, (limit,))}),
        Route(PREFIX + "/audit", {"GET": Operation(audit, (
            *(Param(name, max_chars=512) for name in AUDIT_FILTERS if name != "outcome"),
            Param("outcome", pattern="issued|denied|error"),
            Param("since", max_chars=64), Param("until", max_chars=64),
            Param("limit", integer=True, low=1, high=MAX_AUDIT_LIMIT),
            Param("after_id", integer=True, low=0, high=10**18),
        ))}),
        Route(PREFIX + "/inventory", {"GET": Operation(inventory, (Param("identity", max_chars=512),
                                                                   Param("limit", integer=True, low=1, high=10_000)))}),
        Route(PREFIX + "/inventory/unused", {"GET": Operation(inventory_unused, (Param("window", max_chars=16),),
                                                              required=("window",))}),
        Route(PREFIX + "/config/versions", {"GET": Operation(config_versions, (Param("limit", integer=True, low=1, high=500),))}),
        Route(PREFIX + "/config/versions/{version}", {"GET": Operation(config_version)}),
    ]
