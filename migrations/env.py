"""Alembic environment of the broker.

Called two ways:
* by ``sts.store.migrate`` with an open connection (already inside a transaction, holding the
  migration lock) in ``config.attributes["connection"]`` and an optional PostgreSQL schema in
  ``config.attributes["schema"]``;
* by the ``alembic`` command line from the repository root, where the URL comes from the broker's
  settings (``STS_DATABASE_URL``) and never from ``alembic.ini``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from sts.store.migrate import set_search_path
from sts.store.models import metadata

config = context.config


def run(connection: Connection) -> None:
    schema = config.attributes.get("schema")
    if schema:
        in_transaction = connection.in_transaction()
        set_search_path(connection, schema)
        if not in_transaction:
            # Do not leave an autobegun transaction that Alembic would take as the caller's.
            connection.commit()
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things in place; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    from sts.settings import Settings
    from sts.store.db import normalise_url

    context.configure(url=normalise_url(Settings().database_url), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    from sts.settings import Settings
    from sts.store.db import prepare_for_writes
    from sts.store.migrate import connect, migration_lock

    # The command line: same lock and transaction handling as `sts db upgrade`.
    url = config.attributes.get("url") or Settings().database_url
    with connect(url, config.attributes.get("schema")) as conn, migration_lock(conn):
        prepare_for_writes(conn)
        with conn.begin():
            run(conn)


if context.is_offline_mode():
    run_offline()
else:
    run_online()
