"""The trust configuration: schema (``models``) and loading/checking (``loader``)."""

from __future__ import annotations

from sts.config.loader import (
    ConfigInvalid,
    ConfigProblem,
    LoadedConfig,
    check_config,
    load_config,
    load_config_bytes,
)
from sts.config.models import (
    BrokerConfig,
    ClaimMappings,
    ClaimValidationRule,
    ClientsConfig,
    DelegationConfig,
    GrantConfig,
    IssuerConfig,
    KeysConfig,
    MatchConfig,
    RegisteredClient,
    TargetConfig,
    TokensConfig,
)

__all__ = [
    "BrokerConfig",
    "ClaimMappings",
    "ClaimValidationRule",
    "ClientsConfig",
    "ConfigInvalid",
    "ConfigProblem",
    "DelegationConfig",
    "GrantConfig",
    "IssuerConfig",
    "KeysConfig",
    "LoadedConfig",
    "MatchConfig",
    "RegisteredClient",
    "TargetConfig",
    "TokensConfig",
    "check_config",
    "load_config",
    "load_config_bytes",
]
