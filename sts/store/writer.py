"""Group commit: every durable write of a token request goes through one writer thread.

Each request awaits its own future, and everything queued while the previous transaction was
committing goes into the next one, so the cost of a durable commit (an fsync on SQLite, a round
trip on PostgreSQL) is shared by all requests in flight. The event loop never blocks: submitting
is a non-blocking append, and results come back through ``loop.call_soon_threadsafe``.

Writes are handed to the writer thread once per event-loop turn, all of that turn's writes
together. Handing each one over at once looks faster but is not: the loop releases the GIL
inside every signature check (``cryptography`` does), so the writer would get each write alone
and commit about once per request, paying the fixed cost of a commit (~150 µs of CPU for
SQLite's fsync, a round trip for PostgreSQL) per request instead of per turn. The added wait is
at most the rest of the current turn; the answer could not leave before the next turn anyway.

The writer thread shares the GIL with the event loop, and under load a batch holds only a few
requests (about one commit per millisecond), so the fixed Python cost of a transaction counts
as much as the per-row cost. Hence the batch transaction runs on the driver connection (DBAPI)
with statement text prepared once: BEGIN, the inserts, any claims, COMMIT; no SQLAlchemy
execution machinery per statement. Driver errors are wrapped into SQLAlchemy's exception
classes exactly as SQLAlchemy would (with disconnect detection), so failure handling is the
same either way. SQLAlchemy still owns the connection (pool, connect hooks, invalidation).
Rows are plain tuples built on submission and bound positionally. On SQLite each table's rows
go in as one multi-row ``INSERT ... VALUES (...), (...)``: ``executemany`` would drop and retake
the GIL around every row (sqlite3 releases it for each ``sqlite3_step``), and while the loop is
busy each retake can wait for the interpreter's switch interval (5 ms). On PostgreSQL psycopg's
``executemany`` pipelines the rows and parses the one-row statement once, whereas it would
re-parse a long multi-row statement on every call; the batch's statements (issued tokens, audit
records, usage counters) share one pipeline, so the batch costs one round trip before COMMIT
however many tables it writes.

The same transaction upserts the usage counters of its audit rows (sts/store/usage.py): a
handful of rows per batch, counted in Python from the rows already built, so `sts inventory`
never scans the audit table and the exchange pays no extra commit.

The same thread runs the replay guard: one-time ``jti`` values of subject tokens (per issuer)
and of client assertions (RFC 7523 §3: "The JWT MAY contain a 'jti' (JWT ID) claim ... the
authorization server may ensure that JWTs are not replayed by maintaining the set of used 'jti'
values for the length of time for which the JWT would be considered valid"). A claim is a single
upsert, atomic across connections, processes and replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.sql.expression import Executable

from sts.store.db import prepare_for_writes
from sts.store.errors import StoreError, StoreUnavailable
from sts.store.models import audit_events, issued_tokens, replay_guard, usage_counts
from sts.store.records import AuditRecord, IssuedTokenRecord
from sts.store.usage import USAGE_COLUMNS, UsageCounter, upsert_suffix

log = logging.getLogger("sts.store.writer")

Record = AuditRecord | IssuedTokenRecord
_Resolution = tuple["asyncio.Future[Any]", Any, BaseException | None]


@dataclass(slots=True)
class WriterStats:
    """Counters for the benchmark and for logs. ``records`` counts rows made durable."""

    batches: int = 0  # committed group transactions
    records: int = 0
    claims: int = 0
    max_batch_seen: int = 0  # records + claims in the largest committed group transaction
    failed_batches: int = 0  # group transactions rolled back (their items were retried one by one)
    failed_items: int = 0  # writes or claims answered with StoreError


@dataclass(slots=True)
class _Write:
    issued: list[tuple[Any, ...]]  # rows in ISSUED_COLUMNS order
    audit: list[tuple[Any, ...]]  # rows in AUDIT_COLUMNS order
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    after_commit: Any = None  # handed to the writer's after_commit hook once the rows are durable

    @property
    def size(self) -> int:
        return len(self.issued) + len(self.audit)


@dataclass(slots=True)
class _Claim:
    params: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    size: int = field(default=1)


_Item = _Write | _Claim
_STOP = object()


# One encoder for every row: json.dumps with non-default options builds a new one per call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_text(values: Sequence[Any] | None) -> str | None:
    """A list-valued column as stored: JSON text, or NULL for None."""
    if values is None:
        return None
    return _encode(list(values)) if values else "[]"


def context_text(context: Mapping[str, Any] | None) -> str | None:
    """The audit ``context`` column as stored: a JSON object, or NULL when there is none."""
    return _encode(context) if context else None


# Column order of the rows below; the statement text is generated from these names, and a
# test checks that they cover every column of the table (the audit id is autoincrement).
AUDIT_COLUMNS: tuple[str, ...] = (
    "time", "request_id", "outcome", "error", "reason", "client_id", "issuer", "external_subject",
    "identity", "grant", "mode_notes", "requested_targets", "granted_target", "requested_scopes",
    "granted_scopes", "lifetime", "issued_jti", "subject_token_sha256", "actor_identity",
    "config_version", "detail", "trace_id", "context",
)  # fmt: skip
ISSUED_COLUMNS: tuple[str, ...] = (
    "jti", "identity", "issuer_name", "audience", "scopes", "issued_at", "expires_at",
    "subject_token_sha256", "client_id", "actor_identity", "signing_kid", "parent_jti", "status_idx",
)  # fmt: skip


def audit_row(r: AuditRecord) -> tuple[Any, ...]:
    """The ``audit_events`` row of ``r``, in ``AUDIT_COLUMNS`` order (list fields as JSON)."""
    return (
        r.time, r.request_id, r.outcome, r.error, r.reason, r.client_id, r.issuer, r.external_subject,
        r.identity, r.grant, json_text(r.mode_notes), json_text(r.requested_targets), r.granted_target,
        json_text(r.requested_scopes), json_text(r.granted_scopes), r.lifetime, r.issued_jti,
        r.subject_token_sha256, r.actor_identity, r.config_version, r.detail, r.trace_id,
        context_text(r.context),
    )  # fmt: skip


def issued_row(r: IssuedTokenRecord) -> tuple[Any, ...]:
    """The ``issued_tokens`` row of ``r``, in ``ISSUED_COLUMNS`` order."""
    return (
        r.jti, r.identity, r.issuer_name, r.audience, r.scopes, r.issued_at, r.expires_at,
        r.subject_token_sha256, r.client_id, r.actor_identity, r.signing_kid, r.parent_jti, r.status_idx,
    )  # fmt: skip


# Rows per multi-row INSERT (SQLite): keeps the bound parameters (23 per audit row) below the
# limit of every SQLite build (999 before 3.32) and the statement texts, one per row count,
# within sqlite3's statement cache (128).
ROWS_PER_STATEMENT = 32


class _RowInsert:
    """Inserts rows (tuples in ``columns`` order) into one table: on SQLite as multi-row
    ``INSERT INTO t (cols) VALUES (...), (...)`` (text built once per row count), elsewhere as
    one ``executemany`` of the one-row statement (see the module docstring for why).

    Names are quoted by the dialect (``grant`` is reserved in PostgreSQL); the placeholders are
    the driver's positional ones, so a row is bound as a plain tuple with no per-row mapping.
    """

    def __init__(self, table: Table, columns: tuple[str, ...], dialect: Dialect, suffix: str = "") -> None:
        quote = dialect.identifier_preparer
        self._head = "INSERT INTO {} ({}) VALUES ".format(
            quote.format_table(table), ", ".join(quote.format_column(table.c[name]) for name in columns)
        )
        marker = "?" if dialect.paramstyle == "qmark" else "%s"
        self._row = "(" + ", ".join([marker] * len(columns)) + ")"
        self._texts: dict[int, str] = {}
        self._multirow = dialect.name == "sqlite"
        self._suffix = suffix  # an ON CONFLICT clause, for upserts

    def text(self, rows: int) -> str:
        sql = self._texts.get(rows)
        if sql is None:
            sql = self._texts[rows] = self._head + ", ".join([self._row] * rows) + self._suffix
        return sql

    def execute(self, cursor: Any, rows: list[tuple[Any, ...]]) -> None:
        """Insert ``rows`` through a DBAPI cursor (inside the caller's transaction)."""
        if not self._multirow:
            cursor.executemany(self.text(1), rows)
            return
        for start in range(0, len(rows), ROWS_PER_STATEMENT):
            chunk = rows[start : start + ROWS_PER_STATEMENT]
            cursor.execute(self.text(len(chunk)), tuple(itertools.chain.from_iterable(chunk)))


class _DriverStatement:
    """A SQLAlchemy statement compiled once to driver text, bound from a parameter dict."""

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.text = compiled.string
        self._order = tuple(compiled.positiontup or ()) if dialect.positional else None

    def params(self, values: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        return values if self._order is None else tuple(values[name] for name in self._order)


def claim_statement(dialect_name: str) -> Executable:
    """``INSERT .. ON CONFLICT DO UPDATE .. WHERE expired RETURNING``: one statement that claims
    a new jti or takes over an expired one (a row comes back), and touches nothing (no row) when
    the jti is in use. Both backends serialize it on the primary key, so exactly one concurrent
    caller gets a row."""
    values: dict[str, Any] = {"namespace": bindparam("namespace"), "jti": bindparam("jti"), "expires_at": bindparam("expires_at")}
    key = [replay_guard.c.namespace, replay_guard.c.jti]
    expired = replay_guard.c.expires_at < bindparam("now")
    if dialect_name == "postgresql":
        pg = postgresql.insert(replay_guard).values(values)
        return pg.on_conflict_do_update(
            index_elements=key, set_={"expires_at": pg.excluded.expires_at}, where=expired
        ).returning(replay_guard.c.jti)
    if dialect_name == "sqlite":
        lite = sqlite.insert(replay_guard).values(values)
        return lite.on_conflict_do_update(
            index_elements=key, set_={"expires_at": lite.excluded.expires_at}, where=expired
        ).returning(replay_guard.c.jti)
    raise ValueError(f"no replay guard for {dialect_name!r}")


def _commit(cursor: Any) -> None:
    cursor.connection.commit()


def _is_connection_failure(exc: BaseException) -> bool:
    # Retrying item by item cannot help when the database itself is unreachable or locked.
    return isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def _describe(exc: BaseException) -> str:
    # The driver's own message, without SQLAlchemy's echo of the bound parameters.
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {first[0] if first else ''}"


def _resolve_all(resolutions: list[_Resolution]) -> None:
    for future, result, error in resolutions:
        if future.done():  # the awaiting request was cancelled; the write still happened
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class GroupCommitWriter:
    """Writes audit and issued-token records, and claims one-time jtis, in group transactions.

    Invariant: when ``write`` or ``claim_once`` returns, its effect is committed (durable);
    when it raises ``StoreError``, nothing of that call was committed. One call's records are
    one unit, never split across transactions. A failing group transaction is retried unit by
    unit, so one bad record fails only its own caller.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 512,
        max_wait: float = 0.0,
        clock: Callable[[], float] = time.time,
        after_commit: Callable[[list[Any]], None] | None = None,
        usage: bool = True,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._engine = engine
        self._max_batch = max_batch
        self._max_wait = max(0.0, max_wait)
        self._clock = clock
        # Called on the writer thread with the ``after_commit`` values of each committed
        # transaction's writes, in commit order (the audit log lines: see sts.audit).
        self._after_commit = after_commit
        dialect = engine.dialect
        self._claim = _DriverStatement(claim_statement(dialect.name), dialect)
        self._insert_issued = _RowInsert(issued_tokens, ISSUED_COLUMNS, dialect)
        self._insert_audit = _RowInsert(audit_events, AUDIT_COLUMNS, dialect)
        # Usage counters (sts.store.usage) upserted with the audit rows they count; ``usage``
        # off is for measuring what they cost.
        self._usage = UsageCounter(AUDIT_COLUMNS) if usage else None
        self._upsert_usage = _RowInsert(usage_counts, USAGE_COLUMNS, dialect, upsert_suffix(dialect))
        # SQLite: take the write lock at BEGIN, so the transaction cannot fail half-way on a
        # lock upgrade (what sts.store.db.prepare_for_writes asks SQLAlchemy for). PostgreSQL
        # begins implicitly (psycopg is not in autocommit mode) and row locks do that job.
        self._begin = "BEGIN IMMEDIATE" if dialect.name == "sqlite" else None
        self._pipelined = dialect.name == "postgresql" and dialect.driver == "psycopg"
        self._dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders "accepting" and hand-overs against the stop sentinel
        # Items submitted during the current turn of each event loop, not yet queued.
        self._pending: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        self._accepting = False
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self.stats = WriterStats()

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._accepting = True
            self._thread = threading.Thread(target=self._run, name="sts-group-commit", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        """Stop accepting, commit everything already queued, then end the thread."""
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
            # Accepted but not yet handed over: they go before the sentinel and get committed.
            for items in self._pending.values():
                self._queue.put(items)
            self._pending.clear()
            self._queue.put(_STOP)
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("group-commit writer did not drain within %.1f s", timeout)
                return
        # The lock orders every put before the sentinel, so nothing should be left; if the
        # thread died early, answer what is rather than leave requests hanging.
        self._fail_leftovers()

    # --- submission (event loop side) --------------------------------------------------------
    async def write(self, *records: Record) -> None:
        """Commit ``records`` in one transaction (grouped with other callers'); returns once
        they are durable. Raises ``StoreError`` if they could not be written."""
        if not records:
            return
        issued: list[tuple[Any, ...]] = []
        audit: list[tuple[Any, ...]] = []
        for record in records:
            if isinstance(record, AuditRecord):
                audit.append(audit_row(record))
            elif isinstance(record, IssuedTokenRecord):
                issued.append(issued_row(record))
            else:
                raise TypeError(f"cannot store {type(record).__name__}")
        await self.submit(issued, audit)

    def submit(self, issued: list[tuple[Any, ...]], audit: list[tuple[Any, ...]], after_commit: Any = None) -> asyncio.Future[Any]:
        """``write`` for rows already in ``ISSUED_COLUMNS``/``AUDIT_COLUMNS`` order: the future
        resolves once they are durable, or fails with ``StoreError``. ``after_commit`` (not None)
        goes to the writer's ``after_commit`` hook after the commit."""
        loop = asyncio.get_running_loop()
        item = _Write(issued, audit, loop, loop.create_future(), after_commit)
        self._submit(item)
        return item.future

    async def claim_once(self, namespace: str, jti: str, expires_at: float, *, now: float | None = None) -> bool:
        """Record ``jti`` as used in ``namespace`` until ``expires_at``. True if this call
        claimed it; False if it is already claimed and not yet expired (a replay)."""
        loop = asyncio.get_running_loop()
        params = {
            "namespace": namespace,
            "jti": jti,
            "expires_at": float(expires_at),
            "now": float(self._clock() if now is None else now),
        }
        item = _Claim(params, loop, loop.create_future())
        self._submit(item)
        result: bool = await item.future
        return result

    def _submit(self, item: _Item) -> None:
        """Called on ``item.loop``: the item is queued at the end of this loop turn."""
        with self._lock:
            if not self._accepting:
                raise StoreError("the group-commit writer is not running")
            pending = self._pending.get(item.loop)
            if pending is None:
                self._pending[item.loop] = [item]
                item.loop.call_soon(self._hand_over, item.loop)
            else:
                pending.append(item)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        # Runs after everything that was ready in the turn that submitted the first item. The
        # turn's items go over as one queue entry: one wake-up of the writer thread per turn.
        with self._lock:
            items = self._pending.pop(loop, None)  # None if stop() queued them
            if items:
                self._queue.put(items)

    # --- writer thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            stopping = False
            while not stopping:
                first = self._queue.get()
                if first is _STOP:
                    break
                batch, stopping = self._collect(first)
                try:
                    self._process(batch)
                except Exception as exc:  # a bug here must not strand every later request
                    log.exception("group-commit writer failed on a batch")
                    self.stats.failed_items += len(batch)
                    self._resolve(batch, [(item.future, None, self._error(exc)) for item in batch])
        finally:
            self._close_connection()

    def _collect(self, first: list[_Item]) -> tuple[list[_Item], bool]:
        """The first turn's items plus every turn queued meanwhile, until the batch holds
        max_batch records and claims (a turn is never split, so one may go past it); with
        max_wait, also whatever arrives within max_wait seconds."""
        batch = list(first)
        size = sum(item.size for item in first)
        deadline = time.monotonic() + self._max_wait if self._max_wait else 0.0
        while size < self._max_batch:
            try:
                if deadline:
                    remaining = deadline - time.monotonic()
                    nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                else:
                    nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                return batch, True
            batch.extend(nxt)
            size += sum(item.size for item in nxt)
        return batch, False

    def _process(self, batch: list[_Item]) -> None:
        resolutions: list[_Resolution] = []
        try:
            results = self._execute(batch)
        except Exception as exc:  # any failure: the whole transaction was rolled back
            self.stats.failed_batches += 1
            log.warning("group commit of %d items failed: %s", len(batch), _describe(exc))
            if len(batch) == 1 or _is_connection_failure(exc):
                self.stats.failed_items += len(batch)
                resolutions = [(item.future, None, self._error(exc)) for item in batch]
            else:
                resolutions = self._retry_one_by_one(batch)
        else:
            resolutions = [(item.future, result, None) for item, result in zip(batch, results, strict=True)]
        self._resolve(batch, resolutions)
        self._report_committed(batch, resolutions)

    def _report_committed(self, batch: list[_Item], resolutions: list[_Resolution]) -> None:
        if self._after_commit is None:
            return
        values = [
            item.after_commit
            for item, (_, _, error) in zip(batch, resolutions, strict=True)
            if error is None and isinstance(item, _Write) and item.after_commit is not None
        ]
        if values:
            try:
                self._after_commit(values)
            except Exception:  # the rows are durable; a failing hook must not fail the writer
                log.exception("after-commit hook failed")

    def _retry_one_by_one(self, batch: list[_Item]) -> list[_Resolution]:
        resolutions: list[_Resolution] = []
        fatal: BaseException | None = None
        for item in batch:
            if fatal is not None:
                resolutions.append((item.future, None, self._error(fatal)))
                self.stats.failed_items += 1
                continue
            try:
                (result,) = self._execute([item])
            except Exception as exc:
                self.stats.failed_items += 1
                resolutions.append((item.future, None, self._error(exc)))
                if _is_connection_failure(exc):
                    fatal = exc
            else:
                resolutions.append((item.future, result, None))
        return resolutions

    def _execute(self, batch: list[_Item]) -> list[Any]:
        """One transaction for the whole batch; results in batch order (None or claim bool)."""
        issued: list[tuple[Any, ...]] = []
        audit: list[tuple[Any, ...]] = []
        claims = 0
        for item in batch:
            if isinstance(item, _Write):
                issued.extend(item.issued)
                audit.extend(item.audit)
            else:
                claims += 1
        for attempt in (1, 2):
            conn = self._connection()
            committing = False
            try:
                results = self._on_driver(conn, self._write_rows, batch, issued, audit)
                committing = True
                self._on_driver(conn, _commit)
            except Exception as exc:
                if not _is_connection_failure(exc):
                    raise
                self._close_connection()
                # A connection found dead before COMMIT was sent committed nothing, so one more
                # try on a fresh connection is safe (a restarted server, an idle connection cut
                # by a proxy). A failure during COMMIT leaves the outcome unknown: report it.
                if attempt == 1 and not committing and isinstance(exc, DBAPIError) and exc.connection_invalidated:
                    log.info("writer connection was lost; retrying on a new one")
                    continue
                raise
            break
        self.stats.batches += 1
        self.stats.records += len(issued) + len(audit)
        self.stats.claims += claims
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(issued) + len(audit) + claims)
        return results

    def _write_rows(
        self, cursor: Any, batch: list[_Item], issued: list[tuple[Any, ...]], audit: list[tuple[Any, ...]]
    ) -> list[Any]:
        """BEGIN and every statement of the batch, not the COMMIT; results in batch order."""
        if self._begin is not None:
            cursor.execute(self._begin)
        counters = self._usage.rows(audit) if audit and self._usage is not None else None
        with self._one_round_trip(cursor, (bool(issued) + bool(audit) + bool(counters)) > 1):
            if issued:
                self._insert_issued.execute(cursor, issued)
            if audit:
                self._insert_audit.execute(cursor, audit)
            if counters:
                self._upsert_usage.execute(cursor, counters)
        results: list[Any] = []
        for item in batch:
            if isinstance(item, _Claim):
                cursor.execute(self._claim.text, self._claim.params(item.params))
                results.append(bool(cursor.fetchall()))  # a row came back: this call claimed it
            else:
                results.append(None)
        return results

    def _one_round_trip(self, cursor: Any, several: bool) -> Any:
        """PostgreSQL: ``several`` statements of the batch in one pipeline, so the usage upsert
        (and the second table) adds no round trip; otherwise (one statement, which psycopg's
        ``executemany`` pipelines by itself, or none: a batch of claims) and elsewhere a no-op."""
        if several and self._pipelined:
            return cursor.connection.pipeline()
        return contextlib.nullcontext()

    def _on_driver(self, conn: Connection, work: Callable[..., Any], *args: Any) -> Any:
        """Run ``work(cursor, *args)`` on ``conn``'s DBAPI connection. On failure the
        transaction is rolled back and a driver error is raised as SQLAlchemy would raise it:
        wrapped in the matching ``DBAPIError`` subclass, with the connection invalidated (and
        ``connection_invalidated`` set) when the dialect recognises a disconnect."""
        dbapi_conn: Any = None
        cursor: Any = None
        try:
            dbapi_conn = conn.connection.dbapi_connection
            cursor = dbapi_conn.cursor()
            return work(cursor, *args)
        except Exception as exc:
            rolled_back = False
            if dbapi_conn is not None:
                try:
                    dbapi_conn.rollback()
                    rolled_back = True
                except Exception:  # a dead connection cannot roll back; it is discarded anyway
                    log.debug("rollback of the writer connection failed", exc_info=True)
            if not isinstance(exc, self._dbapi_error):
                raise
            dialect = self._engine.dialect
            # The dialect recognises a disconnect from the driver's connection state, which can
            # lag: psycopg reports a socket reset seen by poll() ("connection socket closed")
            # before libpq marks the connection bad. An operational error on a connection that
            # then cannot even roll back is a lost connection too.
            lost = dbapi_conn is not None and (
                dialect.is_disconnect(exc, dbapi_conn, cursor)
                or (not rolled_back and isinstance(exc, dialect.loaded_dbapi.OperationalError))
            )
            if lost:
                conn.invalidate(exc)
            raise DBAPIError.instance(
                None, None, exc, self._dbapi_error, connection_invalidated=lost, dialect=dialect
            ) from exc
        finally:
            if cursor is not None:
                try:
                    cursor.close()
                except Exception:  # closing a cursor of a dead connection may fail; harmless
                    log.debug("closing a writer cursor failed", exc_info=True)

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._close_connection()
            self._conn = prepare_for_writes(self._engine.connect())
        return self._conn

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a dead connection may fail to close; it is discarded either way
                log.debug("closing the writer connection failed", exc_info=True)

    @staticmethod
    def _error(exc: BaseException) -> StoreError:
        # A lost or unreachable database is told apart so that callers can answer "retry later"
        # (sts.store.errors.StoreUnavailable) instead of reporting a failed write.
        kind = StoreUnavailable if _is_connection_failure(exc) else StoreError
        error = kind(f"database write failed ({_describe(exc)})")
        error.__cause__ = exc
        return error

    @staticmethod
    def _resolve(batch: list[_Item], resolutions: list[_Resolution]) -> None:
        # One wake-up per event loop per batch, not one per future.
        by_loop: dict[asyncio.AbstractEventLoop, list[_Resolution]] = {}
        for item, resolution in zip(batch, resolutions, strict=True):
            by_loop.setdefault(item.loop, []).append(resolution)
        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_all, group)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _fail_leftovers(self) -> None:
        leftovers: list[_Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                leftovers.extend(item)
        if leftovers:
            self.stats.failed_items += len(leftovers)
            self._resolve(leftovers, [(i.future, None, StoreError("the group-commit writer stopped")) for i in leftovers])
