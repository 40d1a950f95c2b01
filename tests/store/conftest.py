"""One storage suite for every backend (SQLite file, PostgreSQL schema).

PostgreSQL comes from ``STS_TEST_POSTGRES_URL``; the session works in a schema of its own
(random name, dropped at the end) so that test processes sharing the server do not meet.
Without the variable the PostgreSQL cases are skipped, except under ``CI=true``, where a missing
URL or an unreachable server fails the run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from sts.store import migrate
from sts.store.db import make_engine, normalise_url
from sts.store.models import metadata
from sts.store.writer import GroupCommitWriter
from store_support import Backend, create_schema, drop_schema

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason}; with CI=true the PostgreSQL suite must run", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_base_url() -> str:
    url = os.environ.get("STS_TEST_POSTGRES_URL")
    if not url:
        _unavailable("STS_TEST_POSTGRES_URL is not set")
    assert url is not None
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        _unavailable(f"PostgreSQL at STS_TEST_POSTGRES_URL is unreachable ({type(exc).__name__})")
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="session")
def postgres_backend(postgres_base_url: str) -> Iterator[Backend]:
    schema = create_schema(postgres_base_url)
    # libpq `options` sets search_path on every connection, so engines made by the code under
    # test (migrate, writers of simulated replicas) all land in the session's schema.
    url = make_url(normalise_url(postgres_base_url)).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield Backend("postgres", url.render_as_string(hide_password=False), schema)
    finally:
        drop_schema(postgres_base_url, schema)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", f"sqlite:///{tmp_path / 'db' / 'sts.db'}")
    result: Backend = request.getfixturevalue("postgres_backend")
    return result


@pytest.fixture
def make_db_engine(backend: Backend) -> Iterator[Callable[[], Engine]]:
    """Engines on the test database; each one is a separate pool, like a separate replica."""
    engines: list[Engine] = []

    def make() -> Engine:
        engines.append(make_engine(backend.url))
        return engines[-1]

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def engine(backend: Backend, make_db_engine: Callable[[], Engine]) -> Engine:
    """A migrated, empty database."""
    migrate.upgrade(backend.url)
    eng = make_db_engine()
    if backend.name == "postgres":  # the schema lives for the whole session
        with eng.begin() as conn:
            conn.execute(text("TRUNCATE " + ", ".join(t.name for t in metadata.sorted_tables)))
    return eng


@pytest.fixture
def make_writer(make_db_engine: Callable[[], Engine]) -> Iterator[Callable[..., GroupCommitWriter]]:
    writers: list[GroupCommitWriter] = []

    def make(engine: Engine | None = None, **kwargs: Any) -> GroupCommitWriter:
        writer = GroupCommitWriter(engine or make_db_engine(), **kwargs)
        writer.start()
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        writer.stop()


@pytest.fixture
def writer(engine: Engine, make_writer: Callable[..., GroupCommitWriter]) -> GroupCommitWriter:
    return make_writer(engine)
