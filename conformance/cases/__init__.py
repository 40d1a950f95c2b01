"""The conformance cases, registered on import; ``all_cases()`` lists them in a stable order."""

from __future__ import annotations

import importlib

from conformance.cases.base import LEVELS, REGISTRY, Case, CaseFailure, CaseSkip, Context, Level

# Registration order is report order within a section: request shape first, SPIFFE last.
_MODULES = ("request", "response", "errors", "resource", "metadata", "issued", "jwt_bcp", "exact_claims", "forgery",
            "dpop", "key_cache", "spiffe", "jwt_bearer")
for _name in _MODULES:
    importlib.import_module(f"conformance.cases.{_name}")


def all_cases() -> list[Case]:
    """Every registered case, in registration order."""
    return list(REGISTRY.values())


__all__ = ["LEVELS", "Case", "CaseFailure", "CaseSkip", "Context", "Level", "all_cases"]
