"""The pure kill-switch and revocation decision (sts.lifecycle.decision)."""

from __future__ import annotations

import pytest

from sts.lifecycle.decision import EMPTY, KILLED_TEXT, REVOKED_TEXT, KillSwitch, LifecycleSnapshot

NOW = 1_000.0


def snapshot(*kills: KillSwitch, revoked: tuple[str, ...] = ()) -> LifecycleSnapshot:
    return LifecycleSnapshot.build(kills=kills, revoked=revoked, kills_version=1, revocations_version=1)


ASK = {"identity": "wl:a", "issuer": "local", "client": "worker", "grant": "agents"}


@pytest.mark.parametrize(("kill", "expected"), [
    pytest.param(KillSwitch(1, "identity", "wl:a"), "killed_identity", id="identity"),
    pytest.param(KillSwitch(1, "issuer", "local"), "killed_issuer", id="issuer"),
    pytest.param(KillSwitch(1, "client", "worker"), "killed_client", id="client"),
    pytest.param(KillSwitch(1, "grant", "agents"), "killed_grant", id="grant"),
    pytest.param(KillSwitch(1, "identity", "wl:b"), None, id="other-identity"),
    pytest.param(KillSwitch(1, "client", "wl:a"), None, id="kind-matters"),
    pytest.param(KillSwitch(1, "identity", "wl:a", until=NOW + 1), "killed_identity", id="until-future"),
    pytest.param(KillSwitch(1, "identity", "wl:a", until=NOW), None, id="until-reached"),
    pytest.param(KillSwitch(1, "identity", "wl:x"), "killed_actor_identity", id="actor-identity"),
])
def test_kill_decision(kill: KillSwitch, expected: str | None) -> None:
    refusal = snapshot(kill).check(**ASK, actor="wl:x", subject_jti=None, actor_jti=None, now=NOW)
    assert (refusal.reason if refusal else None) == expected
    if refusal is not None:
        assert refusal.text == KILLED_TEXT and f"kill {kill.id}" in refusal.detail


def test_issuer_and_client_kills_do_not_apply_to_the_actor_by_value() -> None:
    # The actor is checked as an identity only: its issuer/client are the request's own.
    snap = snapshot(KillSwitch(1, "issuer", "wl:x"), KillSwitch(2, "grant", "wl:x"))
    assert snap.check(**ASK, actor="wl:x", subject_jti=None, actor_jti=None, now=NOW) is None


def test_no_client_and_no_grant_are_never_matched() -> None:
    snap = snapshot(KillSwitch(1, "client", "worker"))
    assert snap.is_killed("wl:a", "local", None, None, NOW) is None


def test_longest_kill_of_a_target_wins() -> None:
    snap = snapshot(KillSwitch(1, "identity", "wl:a", until=NOW + 5), KillSwitch(2, "identity", "wl:a"),
                    KillSwitch(3, "identity", "wl:a", until=NOW + 50))
    hit = snap.is_killed("wl:a", None, None, None, NOW + 100)
    assert hit is not None and hit.id == 2
    snap = snapshot(KillSwitch(1, "identity", "wl:a", until=NOW + 50), KillSwitch(3, "identity", "wl:a", until=NOW + 5))
    assert snap.is_killed("wl:a", None, None, None, NOW + 10) is not None


@pytest.mark.parametrize(("subject_jti", "actor_jti", "expected"), [
    pytest.param("j1", None, "subject_revoked", id="subject"),
    pytest.param(None, "j1", "actor_revoked", id="actor"),
    pytest.param("j2", "j3", None, id="not-revoked"),
    pytest.param(None, None, None, id="foreign-tokens"),
])
def test_revoked_tokens(subject_jti: str | None, actor_jti: str | None, expected: str | None) -> None:
    refusal = snapshot(revoked=("j1",)).check(**ASK, actor=None, subject_jti=subject_jti, actor_jti=actor_jti, now=NOW)
    assert (refusal.reason if refusal else None) == expected
    if expected == "subject_revoked":
        assert refusal is not None and refusal.text == REVOKED_TEXT


def test_empty_snapshot_allows_everything() -> None:
    assert EMPTY.check(**ASK, actor="wl:x", subject_jti="j", actor_jti="k", now=NOW) is None


def test_snapshot_cannot_be_changed_in_place() -> None:
    snap = snapshot(KillSwitch(1, "identity", "wl:a"))
    with pytest.raises(TypeError):
        snap.kills[("identity", "wl:b")] = KillSwitch(2, "identity", "wl:b")  # type: ignore[index]
