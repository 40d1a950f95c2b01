"""The published JSON Schema (draft 2020-12) of the trust configuration, generated from the
pydantic models (``sts.config.models``) so that it can never drift from what the loader
accepts; a test holds the committed files in ``docs/`` equal to what this module generates.

Two documents: ``sts-config.schema.json`` for a whole configuration (one file, or the merged
directory) and ``sts-config-part.schema.json`` for one file of a configuration directory (the
same definitions, nothing required at the top). Property names are the documented snake_case;
the camelCase spellings the loader also accepts are listed beside them so editors accept both.

The schema checks shapes (types, enums, required keys, patterns, unknown keys); the loader
checks the rest (CEL expressions, URLs, references between grants and issuers, files named by
the configuration): ``sts config check`` remains the authority.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Final

from pydantic.alias_generators import to_camel

from sts.config.models import BrokerConfig

SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
#: Where the documents are committed (relative to the repository root) -> whether it is the part.
SCHEMA_FILES: Final = {"docs/sts-config.schema.json": False, "docs/sts-config-part.schema.json": True}


def _with_camel_aliases(node: Any) -> None:
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for name in list(props):
                camel = to_camel(name)
                if camel != name and camel not in props:
                    props[camel] = copy.deepcopy(props[name])
        for value in node.values():
            _with_camel_aliases(value)
    elif isinstance(node, list):
        for value in node:
            _with_camel_aliases(value)


def _explicit_aliases(by_name: dict[str, Any], by_alias: dict[str, Any]) -> None:
    """Use a field's explicit alias where it has one (``schema`` for the field ``schema_``):
    that is the spelling the loader documents. Both schemas list properties in field order."""
    for name_node, alias_node in ((by_name, by_alias), *(
            (by_name["$defs"][k], by_alias["$defs"][k]) for k in by_name.get("$defs", {}))):
        props = name_node.get("properties")
        if not isinstance(props, dict):
            continue
        pairs = list(zip(list(props), list(alias_node["properties"]), strict=True))
        renames = {name: alias for name, alias in pairs if alias not in (name, to_camel(name))}
        if not renames:
            continue
        name_node["properties"] = {renames.get(k, k): v for k, v in props.items()}
        if "required" in name_node:
            name_node["required"] = [renames.get(k, k) for k in name_node["required"]]


def config_schema(*, part: bool = False) -> dict[str, Any]:
    """The JSON Schema of a whole configuration, or of one file of a configuration directory."""
    schema = BrokerConfig.model_json_schema(by_alias=False)
    _explicit_aliases(schema, BrokerConfig.model_json_schema(by_alias=True))
    _with_camel_aliases(schema)
    schema["$schema"] = SCHEMA_DIALECT
    if part:
        schema.pop("required", None)
        schema["title"] = "sts trust configuration (one file of a configuration directory)"
        schema["description"] = (
            "One file of an sts configuration directory: some top-level keys of the whole"
            " configuration; lists (issuers, grants, trust_domains) are combined across files."
        )
    else:
        schema["title"] = "sts trust configuration"
    return schema


def schema_text(*, part: bool = False) -> str:
    return json.dumps(config_schema(part=part), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
