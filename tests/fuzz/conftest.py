"""Hypothesis profiles for the fuzz tests (property-based tests of the parsers and of the HTTP
surface described by docs/openapi.yaml).

Three profiles, chosen with ``STS_FUZZ_PROFILE`` (default: ``ci`` under ``CI=true``, else
``dev``):

* ``ci``: derandomized, no example database. Every CI run tries the same examples, so a red
  run is reproduced exactly by running the same command again, and a green run cannot turn red
  by luck on an unrelated change. Breadth comes from the ``dev`` runs on developers' machines
  and from ``deep``.
* ``dev``: random examples, and failing examples kept in ``.hypothesis/`` and replayed first on
  the next run (the directory is ignored by git).
* ``deep``: random and a hundred times more examples, without a deadline; for a manual soak
  (``STS_FUZZ_PROFILE=deep .venv/bin/python -m pytest tests/fuzz``), never in ``make test``.

The example counts keep the whole fuzz set to seconds in ``make test``. The deadline is not a
performance assertion: it is generous (a parse is microseconds) and catches only a runaway
input, such as a regular expression that backtracks catastrophically. ``too_slow`` is not a
health check here because it measures a shared, loaded machine, not the code.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": timedelta(seconds=2),
    "suppress_health_check": (HealthCheck.too_slow,),
    "print_blob": True,
}

settings.register_profile("ci", max_examples=200, derandomize=True, database=None, **_COMMON)
settings.register_profile("dev", max_examples=200, **_COMMON)
settings.register_profile("deep", max_examples=20_000, deadline=None,
                          suppress_health_check=(HealthCheck.too_slow,), print_blob=True)
settings.load_profile(
    os.environ.get("STS_FUZZ_PROFILE") or ("ci" if os.environ.get("CI", "").lower() == "true" else "dev")
)
