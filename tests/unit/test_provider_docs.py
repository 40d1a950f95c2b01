"""docs/providers works as written: each page's broker configuration loads (with the issuers
its grants name), names the upstream its text says, and the README's profile table agrees
with sts.tokens.profiles."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sts.config.models import BrokerConfig
from sts.tokens.profiles import PROFILES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "providers"
PAGES = ["openai", "anthropic", "openrouter", "google", "entra"]
PROVIDER = {"openai": "openai", "anthropic": "anthropic", "openrouter": "openrouter", "google": "gcp-sts", "entra": "entra"}


def yaml_blocks(page: str) -> list[dict[str, Any]]:
    text = (DOCS / f"{page}.md").read_text(encoding="utf-8")
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]


@pytest.mark.parametrize("page", PAGES)
def test_the_pages_broker_configuration_loads(page: str) -> None:
    blocks = [b for b in yaml_blocks(page) if isinstance(b, dict) and "upstreams" in b]
    assert len(blocks) == 1, "one complete broker configuration per page"
    doc = blocks[0]
    names = {n for g in doc["grants"] for n in g.get("issuers", ())}
    config = {
        "issuer": "https://sts.example.com",
        "issuers": [{"name": n, "issuer": f"https://{n}.example.com", "audiences": ["sts"]} for n in sorted(names)],
        **doc,
    }
    parsed = BrokerConfig.model_validate(config)
    (upstream,) = parsed.upstreams
    assert upstream.provider == PROVIDER[page]
    targets = [t for g in parsed.grants for t in g.targets]
    assert [t.upstream for t in targets] == [upstream.name]
    # The subject the page tells you to configure at the provider is the one the broker sends.
    text = (DOCS / f"{page}.md").read_text(encoding="utf-8")
    if page != "google":  # Google matches on the principal, which embeds the subject
        assert f"`{upstream.subject}`" in text


@pytest.mark.parametrize("page", PAGES)
def test_the_pages_profile_alternative_is_valid(page: str) -> None:
    blocks = [b for b in yaml_blocks(page) if isinstance(b, dict) and "targets" in b and "upstreams" not in b]
    assert blocks, "each page shows the profile alternative"
    config = {
        "issuer": "https://sts.example.com",
        "issuers": [{"name": "idp", "issuer": "https://idp.example.com", "audiences": ["sts"]}],
        "grants": [{"name": "g", "match": {"identity": "x"}, **blocks[0]}],
    }
    parsed = BrokerConfig.model_validate(config)
    assert parsed.grants[0].targets[0].profile == PROVIDER[page]


def test_readme_profile_table_matches_the_code() -> None:
    text = (DOCS / "README.md").read_text(encoding="utf-8")
    for name, profile in PROFILES.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        if name != "generic":
            hours = profile.max_lifetime // 3600
            assert f"{hours} hour" in row, row
            for alg in profile.algorithms:
                assert alg in row, row
