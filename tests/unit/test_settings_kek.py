"""Where the key-encryption keys come from: current, previous, and the one dev location."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from sts.settings import DEV_KEK_FILE, Settings, SettingsError, encode_kek, keep_dev_kek, load_keks


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("STS_"):
            monkeypatch.delenv(name)


def test_current_and_previous(tmp_path: Path) -> None:
    current, previous = os.urandom(32), os.urandom(32)
    (tmp_path / "old.kek").write_text(encode_kek(previous) + "\n")
    material = load_keks(Settings(kek=encode_kek(current), kek_previous_file=tmp_path / "old.kek"))
    assert material.current == current and material.previous == (previous,)
    assert material.origin == "STS_KEK" and material.pending_dev_file is None
    assert material.all == (current, previous)


def test_a_previous_kek_equal_to_the_current_one_is_dropped() -> None:
    kek = encode_kek(os.urandom(32))
    assert load_keks(Settings(kek=kek, kek_previous=kek)).previous == ()


def test_kek_file_origin_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "kek").write_text(encode_kek(os.urandom(32)))
    assert load_keks(Settings(kek_file=tmp_path / "kek")).origin == f"STS_KEK_FILE={tmp_path / 'kek'}"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        pytest.param({}, "no key-encryption key", id="none-outside-dev-mode"),
        pytest.param({"kek": "c2hvcnQ"}, "must be 32 bytes", id="too-short"),
        pytest.param({"kek": encode_kek(os.urandom(32)), "kek_previous": "a"}, "STS_KEK_PREVIOUS is not valid base64url", id="bad-previous"),
        pytest.param({"kek_file": Path("missing.kek")}, "cannot read the key-encryption key file STS_KEK_FILE=missing.kek", id="missing-file"),
    ],
)
def test_unusable_settings(settings: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_keks(Settings(**settings))  # type: ignore[arg-type]


def test_dev_kek_is_generated_in_memory_and_kept_only_on_request(tmp_path: Path) -> None:
    assert DEV_KEK_FILE == Path("var/dev/kek")  # the file `make run` uses
    material = load_keks(Settings(dev_mode=True))
    assert material.pending_dev_file == DEV_KEK_FILE and "(new)" in material.origin
    assert not (tmp_path / DEV_KEK_FILE).exists()
    keep_dev_kek(material)
    written = tmp_path / DEV_KEK_FILE
    assert written.stat().st_mode & 0o777 == 0o600
    assert base64.urlsafe_b64decode(written.read_text().strip() + "=") == material.current
    again = load_keks(Settings(dev_mode=True))
    assert again.current == material.current and again.pending_dev_file is None
    assert sorted(p.name for p in tmp_path.rglob("*kek*")) == ["kek"]


def test_a_dev_kek_generated_by_another_process_first_is_not_overwritten(tmp_path: Path) -> None:
    mine, theirs = load_keks(Settings(dev_mode=True)), load_keks(Settings(dev_mode=True))
    assert mine.current != theirs.current
    keep_dev_kek(theirs)
    with pytest.raises(SettingsError, match="created the dev KEK var/dev/kek at the same time"):
        keep_dev_kek(mine)
    keep_dev_kek(theirs)  # the winner again: nothing to do
    assert load_keks(Settings(dev_mode=True)).current == theirs.current
