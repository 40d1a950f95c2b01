"""Retention cutoffs and the audit export format (sts.ops.retention, sts.ops.archive): pure parts."""

from __future__ import annotations

import json

import pytest

from sts.ops.archive import EXPORT_FIELDS, BadTime, export_line, parse_time, utc_text
from sts.ops.retention import DAY, RetentionPolicy

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("audit_days", "issued_days", "audit_before", "issued_before"),
    [
        pytest.param(90, 7, NOW - 90 * DAY, NOW - 7 * DAY, id="defaults"),
        pytest.param(0.5, 0.25, NOW - 43_200, NOW - 21_600, id="fractions-of-a-day"),
        pytest.param(0, 7, None, NOW - 7 * DAY, id="audit-kept-forever"),
        pytest.param(30, 0, NOW - 30 * DAY, None, id="issued-kept-forever"),
    ],
)
def test_cutoffs(audit_days: float, issued_days: float, audit_before: float | None, issued_before: float | None) -> None:
    cut = RetentionPolicy(audit_days=audit_days, issued_token_days=issued_days).cutoffs(NOW)
    assert cut.audit_before == audit_before
    assert cut.issued_expired_before == issued_before


@pytest.mark.parametrize("days", [0.001, 1, 90, 3650])
def test_cutoff_never_later_than_now_minus_window(days: float) -> None:
    cut = RetentionPolicy(audit_days=days, issued_token_days=days).cutoffs(NOW)
    assert cut.audit_before is not None and cut.audit_before <= NOW - days * DAY
    assert cut.issued_expired_before is not None and cut.issued_expired_before <= NOW - days * DAY


@pytest.mark.parametrize(
    ("text", "epoch"),
    [
        pytest.param("1764547200", 1764547200.0, id="epoch"),
        pytest.param("1764547200.25", 1764547200.25, id="epoch-fraction"),
        pytest.param("2025-12-01", 1764547200.0, id="date-is-utc-midnight"),
        pytest.param("2025-12-01T00:00:00Z", 1764547200.0, id="z"),
        pytest.param("2025-12-01T00:00:00z", 1764547200.0, id="lowercase-z"),
        pytest.param("2025-12-01T02:00:00+02:00", 1764547200.0, id="offset"),
        pytest.param("2025-12-01 00:00:00", 1764547200.0, id="naive-is-utc"),
        pytest.param("2025-12-01T00:00:00.500Z", 1764547200.5, id="fraction"),
        pytest.param(" 2025-12-01 ", 1764547200.0, id="spaces"),
    ],
)
def test_parse_time(text: str, epoch: float) -> None:
    assert parse_time(text) == epoch


@pytest.mark.parametrize("text", ["", "yesterday", "2025-13-01", "-5", "1e9", "12:00"])
def test_parse_time_refuses(text: str) -> None:
    with pytest.raises(BadTime):
        parse_time(text)


def test_export_line_has_stable_fields_in_order() -> None:
    row = {"id": 7, "time": 1764547200.5, "request_id": "r", "outcome": "denied", "count": 3,
           "mode_notes": ["coalesced"], "requested_scopes": None, "detail": "é", "unknown_column": "dropped"}
    doc = json.loads(export_line(row))
    assert tuple(doc) == EXPORT_FIELDS
    assert doc["time"] == 1764547200.5 and doc["time_utc"] == "2025-12-01T00:00:00.500000Z"
    assert doc["count"] == 3 and doc["mode_notes"] == ["coalesced"] and doc["requested_scopes"] is None
    assert doc["detail"] == "é" and "unknown_column" not in doc
    assert "\n" not in export_line({**row, "detail": "a\nb"})


def test_utc_text_round_trips_through_parse_time() -> None:
    assert parse_time(utc_text(1764547200.123456)) == pytest.approx(1764547200.123456, abs=1e-6)
