"""Stored configuration versions (sts.store.config_versions), on every backend."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from sts.store.config_versions import AmbiguousVersion, ConfigVersionRepository, UnknownVersion
from sts.store.models import config_versions


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _record(repo: ConfigVersionRepository, text: str, now: float, by: str = "replica-a") -> str:
    sha = _sha(text)
    repo.record(sha256=sha, kind="file", source="/etc/sts/sts.yaml", document=text, now=now, loaded_by=by)
    return sha


def test_record_is_idempotent_and_moves_only_forward(engine: Engine) -> None:
    repo = ConfigVersionRepository(engine)
    sha = _record(repo, "issuer: a\n", 100.0)
    _record(repo, "issuer: a\n", 200.0, by="replica-b")
    _record(repo, "issuer: a\n", 150.0, by="replica-late-clock")
    [row] = repo.history()
    assert (row.sha256, row.version, row.first_loaded_at, row.last_loaded_at, row.loaded_by) == (sha, sha[:12], 100.0, 200.0, "replica-b")
    assert row.document == ""  # history leaves documents out
    assert repo.get(sha[:12]).document == "issuer: a\n"


def test_history_latest_and_lookup(engine: Engine) -> None:
    repo = ConfigVersionRepository(engine)
    a = _record(repo, "issuer: a\n", 100.0)
    b = _record(repo, "issuer: b\n", 200.0)
    assert [r.sha256 for r in repo.history()] == [b, a]
    # Rolling back to a: it becomes the latest again, with its first time kept.
    _record(repo, "issuer: a\n", 300.0)
    latest = repo.latest()
    assert latest is not None and (latest.sha256, latest.first_loaded_at, latest.document) == (a, 100.0, "issuer: a\n")
    assert repo.get(a).sha256 == a and repo.get(a[:12].upper()).sha256 == a
    with pytest.raises(UnknownVersion):
        repo.get("0" * 64)
    with pytest.raises(UnknownVersion):
        repo.get("not-hex")
    with pytest.raises(UnknownVersion):
        repo.get("abc")  # shorter than 4 digits


def test_ambiguous_prefix(engine: Engine) -> None:
    repo = ConfigVersionRepository(engine)
    texts: dict[str, str] = {}
    i = 0
    while True:  # two documents whose hashes share the first 4 hex digits
        text = f"issuer: x{i}\n"
        prefix = _sha(text)[:4]
        if prefix in texts:
            break
        texts[prefix] = text
        i += 1
    _record(repo, texts[prefix], 1.0)
    _record(repo, text, 2.0)
    with pytest.raises(AmbiguousVersion):
        repo.get(prefix)
    assert repo.get(_sha(text)[:12]).document == text
    assert repo.latest() is not None


def test_replicas_recording_the_same_document_at_once(engine: Engine, make_db_engine: Callable[[], Engine]) -> None:
    """Several replicas load the same configuration at the same moment: one row, no error."""
    repos = [ConfigVersionRepository(make_db_engine()) for _ in range(6)]
    start = threading.Barrier(len(repos))
    errors: list[BaseException] = []

    def replica(n: int) -> None:
        start.wait()
        try:
            for k in range(5):
                _record(repos[n], "issuer: shared\n", 1000.0 + k + n / 10, by=f"replica-{n}")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(n,)) for n in range(len(repos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(config_versions)).scalar_one() == 1
    [row] = ConfigVersionRepository(engine).history()
    assert row.last_loaded_at == 1004.5 and row.loaded_by == "replica-5" and row.first_loaded_at < 1001
