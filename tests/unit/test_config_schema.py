"""The published JSON Schema (docs/sts-config.schema.json) is what the models generate, and
editors validating with it agree with the loader on the documented examples."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from sts.config.schema import SCHEMA_FILES, config_schema, schema_text

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "sts" / "examples"


@pytest.mark.parametrize(("name", "part"), SCHEMA_FILES.items())
def test_committed_schema_is_the_generated_one(name: str, part: bool) -> None:
    committed = (REPO / name).read_text(encoding="utf-8")
    assert committed == schema_text(part=part), f"{name} is stale: run `make schema`"


def _validator(part: bool) -> jsonschema.Draft202012Validator:
    schema = config_schema(part=part)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _documented_examples() -> list[str]:
    """Every whole configuration the docs give (a block starting with ``# example:``)."""
    out = []
    for doc in sorted((REPO / "docs").glob("*.md")):
        blocks = doc.read_text().split("```yaml\n")[1:]
        out += [b.split("```", 1)[0] for b in blocks if b.startswith("# example: ")]
    return out


def test_examples_validate() -> None:
    whole = _validator(False)
    assert list(whole.iter_errors(yaml.safe_load((EXAMPLES / "example.yaml").read_text()))) == []
    documented = _documented_examples()
    assert len(documented) >= 4  # configuration.md's three, authorization-details.md's mcp, ...
    for text in documented:
        assert list(whole.iter_errors(yaml.safe_load(text))) == [], text.splitlines()[0]
    part = _validator(True)
    for f in sorted((EXAMPLES / "trust").rglob("*.yaml")):
        assert list(part.iter_errors(yaml.safe_load(f.read_text()))) == [], f


@pytest.mark.parametrize(("doc", "part", "needle"), [
    pytest.param({"issuers": []}, False, "'issuer' is a required property", id="whole-needs-issuer"),
    pytest.param({"grants": [{"name": "g", "match": {"identity": "a"}, "targets": [{"audience": "x"}], "mod": "audit"}]},
                 True, "'mod' was unexpected", id="unknown-key"),
    pytest.param({"grants": [{"name": "g", "match": {"identity": "a"}, "targets": [{"audience": "x"}], "mode": "on"}]},
                 True, "'on' is not one of", id="enum"),
    pytest.param({"tokens": {"max_lifetime": "3600"}}, True, "is not of type 'integer'", id="strict-number"),
])
def test_the_schema_refuses_what_the_loader_refuses(doc: dict[str, object], part: bool, needle: str) -> None:
    messages = [e.message for e in _validator(part).iter_errors(doc)]
    assert any(needle in m for m in messages), messages


def test_camel_case_spellings_are_accepted_too() -> None:
    doc = {"issuer": "https://sts.example.com", "tokens": {"maxLifetime": 3600, "default_lifetime": 900}}
    assert list(_validator(False).iter_errors(doc)) == []
    assert json.loads(schema_text())["$schema"] == "https://json-schema.org/draft/2020-12/schema"
