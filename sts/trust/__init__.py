"""The trust decision (pure): claim mapping with CEL and the grant policy.

:class:`CompiledTrust` is everything the exchange pipeline needs from the configuration's
``issuers`` and ``grants``, compiled once at load: one :class:`CompiledIssuerMapping` per
issuer (step 5, claims -> workload identity) and a :class:`CompiledPolicy` (step 6, identity and
request -> :class:`Allow` or :class:`Deny`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sts.trust.cel import (
    Activation,
    CompiledExpression,
    ExpressionCompileError,
    ExpressionError,
    compile_expression,
)
from sts.trust.mapping import CompiledIssuerMapping, MappingDenied, MappingResult
from sts.trust.policy import Allow, CompiledPolicy, Decision, Deny, GrantMatch

if TYPE_CHECKING:
    from sts.config.models import BrokerConfig

__all__ = [
    "Activation",
    "Allow",
    "CompiledExpression",
    "CompiledIssuerMapping",
    "CompiledPolicy",
    "CompiledTrust",
    "Decision",
    "Deny",
    "ExpressionCompileError",
    "ExpressionError",
    "GrantMatch",
    "MappingDenied",
    "MappingResult",
    "compile_expression",
]


@dataclass(frozen=True)
class CompiledTrust:
    """Compiled mappings (by issuer name) and the compiled policy of one configuration.

    Invariant: there is a mapping for every configured issuer and nothing else.
    """

    mappings: Mapping[str, CompiledIssuerMapping]
    policy: CompiledPolicy

    @classmethod
    def from_config(cls, cfg: BrokerConfig) -> CompiledTrust:
        """Compile a validated configuration; raises ``ExpressionCompileError`` only for
        expressions the schema did not already check (configurations built in code)."""
        mappings = {
            iss.name: CompiledIssuerMapping.from_config(iss, location=f"issuers[{i}]")
            for i, iss in enumerate(cfg.issuers)
        }
        return cls(mappings=mappings, policy=CompiledPolicy.from_config(cfg))

    def mapping_for(self, issuer_name: str) -> CompiledIssuerMapping:
        """The mapping of a configured issuer; ``KeyError`` for an unknown name."""
        return self.mappings[issuer_name]
