"""Load and check the trust configuration file (YAML 1.1, safe loader).

Everything is validated and compiled here, at load, so that no configuration error can surface
while serving: the schema (``sts.config.models``), CEL expressions (``sts.trust.cel``),
references between grants and issuers, and static key files (RFC 7517 JWK Sets, public keys
only). Every problem is reported at once, each with its location in the file
(``grants[2].match.condition at line 14, column 7``); messages never echo values from the file,
which may hold secrets.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from sts.config.cafile import read_ca_file
from sts.config.lint import issuer_url_warnings
from sts.config.models import (
    PRESET_NAMES,
    BrokerConfig,
    GrantConfig,
    IssuerConfig,
    Location,
    MatchConfig,
    RegisteredClient,
    TokensConfig,
    TransactionTokensConfig,
    cross_reference_problems,
    transaction_token_problems,
    dev_mode_requirements,
    format_location,
    validate_jwks,
)
from sts.config.delegation import own_issuer_problems
from sts.config.sources import ConfigSource, SourceError, compose, merge, merge_order, read_source
from sts.config.spiffe import partial_trust_domains, trust_domain_file_problems
from sts.config.upstream import partial_profile_and_upstream_problems
from sts.trust import CompiledTrust, ExpressionCompileError

MAX_CONFIG_BYTES: Final = 16 * 1024 * 1024
MAX_JWKS_FILE_BYTES: Final = 1024 * 1024

_FRIENDLY: Final = {
    "extra_forbidden": "unknown key (not part of the schema)",
    "missing": "required key is missing",
}


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration file.

    ``location`` is the dotted path plus, when known, the line and column in the file
    (``grants[2].match.condition at line 14, column 7``); ``path``, ``line`` and ``column``
    are the same parts separately. ``message`` never holds a value from the file.
    """

    location: str
    message: str
    path: str = ""
    line: int | None = None
    column: int | None = None
    # "warning": the file loads and serves, but probably not as meant (sts.config.lint).
    severity: Literal["error", "warning"] = "error"
    # In a configuration directory: the file (relative to the directory) the problem is in.
    file: str | None = None

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class ConfigInvalid(Exception):
    """The configuration file has problems; ``problems`` lists all of them, ``path`` names the
    file when it was loaded from one."""

    def __init__(self, problems: list[ConfigProblem], path: Path | None = None) -> None:
        self.problems = list(problems)
        self.path = path
        summary = "; ".join(str(p) for p in self.problems[:5])
        more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"invalid configuration: {summary}{more}")

    def one_line(self, path: str | os.PathLike[str] | None = None) -> tuple[str, str]:
        """``(problem, fix)`` for a one-line report: the count and the first problem, and the
        command that lists them all."""
        where = path if path is not None else self.path
        name = f"the configuration {where}" if where is not None else "the configuration"
        check = f"`sts config check {where if where is not None else 'FILE'}`"
        if len(self.problems) == 1 and self.problems[0].location == "(file)":
            message = self.problems[0].message
            if message == "configuration file not found":
                return f"{name} does not exist", "set STS_CONFIG (or --config) to the configuration file"
            return f"{name}: {message}", f"run {check}"
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        first = f"; first: {self.problems[0]}" if self.problems else ""
        return f"{name} is invalid ({count}{first})", f"run {check} to see every problem"


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration with its compiled artefacts.

    Invariant: ``config`` passed every check, ``compiled`` was built from it, ``version`` is
    the first 12 hex digits of the SHA-256 of the file's bytes (of the canonical document of a
    directory, ``sts.config.sources``), ``static_jwks`` holds the
    (public) JWK Set of every issuer configured with ``keys.jwks`` or ``keys.jwks_file``,
    ``ca_certificates`` the PEM certificates of every issuer with a ``ca_file``, and
    ``files_version`` changes whenever the content of a file read with the configuration does
    (so a reload notices a replaced CA or key file even when the configuration file is the same).
    """

    config: BrokerConfig
    version: str
    compiled: CompiledTrust
    base_dir: Path
    path: Path | None = None
    static_jwks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ca_certificates: Mapping[str, str] = field(default_factory=dict)
    # client_id -> PEM of its tls_client_auth_ca_file (RFC 8705 §2.1)
    client_ca_certificates: Mapping[str, str] = field(default_factory=dict)
    files_version: str = ""
    # What was read (a file or a directory of files): the document stored per version.
    source: ConfigSource | None = None

    def resolve(self, relative: str) -> Path:
        """A path from the file, relative to the directory of the configuration file."""
        return resolve_path(self.base_dir, relative)

    def requires_dev_mode(self) -> list[str]:
        return self.config.requires_dev_mode()


def resolve_path(base_dir: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base_dir / p


# libyaml's safe loader is ~10x faster than the pure-Python one: a 10,000-grant file loads in
# seconds instead of tens of seconds. Same safe tag set; the pure-Python one is the fallback.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_config(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read, validate and compile a configuration file or directory (``sts.config.sources``);
    raise :class:`ConfigInvalid`."""
    p = Path(path)
    try:
        source = _read_source(p)
        loaded, problems, _ = _validate(source, base_dir=_base_dir(p), path=p)
        if problems or loaded is None:
            raise ConfigInvalid(problems, p)
        return loaded
    except ConfigInvalid as exc:
        exc.path = p
        raise


def _base_dir(p: Path) -> Path:
    """Relative paths in the configuration start here: the file's directory, or the
    configuration directory itself."""
    return p.resolve() if p.is_dir() else p.resolve().parent


def _read_source(p: Path) -> ConfigSource:
    try:
        return read_source(p, max_bytes=MAX_CONFIG_BYTES)
    except SourceError as exc:
        raise ConfigInvalid([ConfigProblem("(file)", exc.message)]) from None


def check_config(
    path: str | os.PathLike[str], *, warnings: bool = False, for_production: bool = False
) -> list[ConfigProblem]:
    """Every problem of a configuration file (empty when it loads and nothing is asked for),
    ordered by position in the file.

    ``warnings`` adds near misses that load but would not work (``severity="warning"``);
    ``for_production`` adds, as errors, what ``sts serve`` refuses outside dev mode. Both are
    computed from the raw data too, so an invalid file still gets them.
    """
    p = Path(path)
    try:
        source = _read_source(p)
    except ConfigInvalid as exc:
        return exc.problems
    _, problems, parsed = _validate(source, base_dir=_base_dir(p), path=p)
    if parsed is not None:
        raw, locate = parsed
        if warnings:
            problems += [
                replace(locate.problem(loc, msg), severity="warning")
                for loc, msg in issuer_url_warnings(raw)
            ]
        if for_production:
            problems += [
                locate.problem(loc, f"{msg}: `sts serve` refuses this outside dev mode")
                for loc, _, msg in dev_mode_requirements(
                    issuer=raw.get("issuer"), issuers=_raw_insecure_issuers(raw)
                )
            ]
    return sorted(problems, key=lambda q: (merge_order(q.file or ""), q.line or 0, q.column or 0))


def load_config_bytes(data: bytes, *, base_dir: Path, path: Path | None = None) -> LoadedConfig:
    """Validate and compile configuration bytes; relative paths resolve against ``base_dir``."""
    source = ConfigSource("file", ((path.name if path is not None else "sts.yaml", data),), path)
    loaded, problems, _ = _validate(source, base_dir=base_dir, path=path)
    if problems or loaded is None:
        raise ConfigInvalid(problems, path)
    return loaded


def _raw_insecure_issuers(raw: Mapping[str, Any]) -> list[tuple[int, object, object]]:
    items = raw.get("issuers")
    if not isinstance(items, list):
        return []
    return [
        (i, _get(item, "name"), _get(item, "allow_insecure_http"))
        for i, item in enumerate(items)
        if isinstance(item, Mapping)
    ]


def _parse(
    source: ConfigSource,
) -> tuple[yaml.Node | None, dict[str, Any] | None, _Locator | None, list[ConfigProblem]]:
    """Compose every file of ``source`` and merge them: ``(root, raw data, locator, problems)``;
    root and raw data are None when a file does not parse."""
    in_directory = source.kind == "directory"
    problems: list[ConfigProblem] = []
    roots: list[yaml.Node] = []
    for name, data in source.files:
        file = name if in_directory else None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(ConfigProblem("(file)", "the file is not valid UTF-8", file=file))
            continue
        try:
            root = compose(text, name, _SafeLoader)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            what = getattr(exc, "problem", None) or "invalid YAML"
            line = mark.line + 1 if mark is not None else None
            column = mark.column + 1 if mark is not None else None
            problems.append(_problem((), f"YAML syntax error: {what}", line, column, file))
            continue
        if root is None and in_directory:
            continue  # an empty file in a directory adds nothing
        if not isinstance(root, yaml.MappingNode):
            problems.append(ConfigProblem("(file)", "the configuration must be a YAML mapping", file=file))
            continue
        file_locate = _Locator(root, in_directory)
        for loc in _duplicate_keys(root, ()):
            problems.append(file_locate.problem(loc, "duplicate key (YAML keeps only the last one)"))
        roots.append(root)
    if problems and not all(p.message.startswith("duplicate key") for p in problems):
        return None, None, None, problems
    if not roots:
        return None, None, None, [ConfigProblem("(file)", "the configuration must be a YAML mapping")]
    merged = roots[0]
    for other in roots[1:]:
        assert isinstance(merged, yaml.MappingNode) and isinstance(other, yaml.MappingNode)
        for conflict in merge(merged, other):
            where = format_location(conflict.location)
            file, line, column = conflict.second
            problems.append(_problem(
                conflict.location,
                f"already set in {conflict.first[0]} at line {conflict.first[1]}: a value may be set"
                " in one file only (lists such as issuers and grants are combined, other values are not)",
                line, column, file,
            ))
    raw = _SafeLoader("").construct_document(merged)
    if not isinstance(raw, dict):
        return None, None, None, [ConfigProblem("(file)", "the configuration must be a YAML mapping")]
    return merged, raw, _Locator(merged, in_directory), problems


def parse_document(source: ConfigSource) -> BrokerConfig:
    """The validated model of ``source`` without reading the files it names (key, CA and
    bundle files): what ``sts config diff`` compares. Raises :class:`ConfigInvalid`."""
    _, raw, locate, problems = _parse(source)
    if raw is None or locate is None:
        raise ConfigInvalid(problems, source.path)
    try:
        cfg = BrokerConfig.model_validate(raw)
    except ValidationError as exc:
        problems += _schema_problems(exc, raw, locate)
        raise ConfigInvalid(problems, source.path) from None
    if problems:
        raise ConfigInvalid(problems, source.path)
    return cfg


def _schema_problems(exc: ValidationError, raw: Mapping[str, Any], locate: _Locator) -> list[ConfigProblem]:
    problems: list[ConfigProblem] = []
    errors = [
        (tuple(p for p in err["loc"] if p != "[key]"), err)
        for err in exc.errors(include_url=False, include_input=False)
        # Cross references are reported precisely by the partial pass below.
        if err["type"] != "cross_reference"
    ]
    for loc, err in errors:
        # pydantic checks a sequence's min_length over the items that validated, so an
        # invalid only item also yields "at least 1 item": noise next to the real error.
        if err["type"] == "too_short" and any(
            len(other) > len(loc) and other[: len(loc)] == loc for other, _ in errors
        ):
            continue
        problems.append(locate.problem(loc, _message(err)))
    for loc, msg in _partial_cross_references(raw):
        problems.append(locate.problem(loc, msg))
    return problems


def _validate(
    source: ConfigSource, *, base_dir: Path, path: Path | None
) -> tuple[LoadedConfig | None, list[ConfigProblem], tuple[dict[str, Any], _Locator] | None]:
    """``(loaded or None, every problem, (raw data, locator) once the YAML parsed)``."""
    version = source.version
    root, raw, locate, problems = _parse(source)
    if raw is None or locate is None:
        return None, problems, None

    cfg: BrokerConfig | None = None
    try:
        cfg = BrokerConfig.model_validate(raw)
    except ValidationError as exc:
        problems += _schema_problems(exc, raw, locate)

    static_jwks: dict[str, Mapping[str, Any]] = {}
    for loc, name, rel in _issuer_files(raw, "keys", "jwks_file"):
        jwks, msgs = _read_jwks_file(base_dir, rel)
        problems.extend(locate.problem(loc, m) for m in msgs)
        if jwks is not None and name is not None:
            static_jwks[name] = jwks
    ca_certificates: dict[str, str] = {}
    for loc, name, rel in _issuer_files(raw, "ca_file"):
        pem, msgs = read_ca_file(resolve_path(base_dir, rel))
        problems.extend(locate.problem(loc, m) for m in msgs)
        if pem is not None and name is not None:
            ca_certificates[name] = pem
    client_cas: dict[str, str] = {}
    for loc, client_id, rel in _client_ca_files(raw):
        pem, msgs = read_ca_file(resolve_path(base_dir, rel))
        problems.extend(locate.problem(loc, m.replace("ca_file", "tls_client_auth_ca_file")) for m in msgs)
        if pem is not None and client_id is not None:
            client_cas[client_id] = pem
    problems.extend(locate.problem(loc, m) for loc, m in trust_domain_file_problems(raw, base_dir))

    if problems or cfg is None:
        return None, problems, (raw, locate)

    try:
        compiled = CompiledTrust.from_config(cfg)
    except ExpressionCompileError as exc:  # pragma: no cover - the schema compiles them first
        return None, [ConfigProblem(exc.location, exc.message, path=exc.location)], (raw, locate)
    for iss in cfg.issuers:
        if iss.keys.jwks is not None:
            static_jwks[iss.name] = iss.keys.jwks
    files = json.dumps([sorted(static_jwks.items()), sorted(ca_certificates.items()), sorted(client_cas.items())],
                       sort_keys=True)
    loaded = LoadedConfig(
        config=cfg,
        version=version,
        compiled=compiled,
        base_dir=base_dir,
        path=path,
        static_jwks=static_jwks,
        ca_certificates=ca_certificates,
        client_ca_certificates=client_cas,
        files_version=hashlib.sha256(files.encode()).hexdigest()[:12],
        source=source,
    )
    return loaded, problems, (raw, locate)


# --- helpers -------------------------------------------------------------------------------------


def _client_ca_files(raw: Any) -> list[tuple[tuple[str | int, ...], str | None, str]]:
    """(location, client_id, relative path) of every registered client's tls_client_auth_ca_file."""
    clients = raw.get("clients") if isinstance(raw, dict) else None
    registered = clients.get("registered") if isinstance(clients, dict) else None
    found: list[tuple[tuple[str | int, ...], str | None, str]] = []
    for i, item in enumerate(registered if isinstance(registered, list) else ()):
        if isinstance(item, dict) and isinstance(item.get("tls_client_auth_ca_file"), str):
            client_id = item.get("client_id")
            found.append((("clients", "registered", i, "tls_client_auth_ca_file"),
                          client_id if isinstance(client_id, str) else None, item["tls_client_auth_ca_file"]))
    return found


def _message(err: Mapping[str, Any]) -> str:
    friendly = _FRIENDLY.get(err["type"])
    if friendly is not None:
        return friendly
    if err["type"] == "too_short":
        n = err.get("ctx", {}).get("min_length", 1)
        return f"must have at least {n} item{'s' if n != 1 else ''}"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def _problem(loc: Location, message: str, line: int | None, column: int | None,
             file: str | None = None) -> ConfigProblem:
    path = format_location(loc) or "(file)"
    where = path if file is None else f"{path} in {file}"
    where = where if line is None else f"{where} at line {line}, column {column}"
    return ConfigProblem(where, message, path=path, line=line, column=column, file=file)


class _Locator:
    """Maps a location path to the line and column of its YAML node (and, for a directory,
    the file the node comes from)."""

    def __init__(self, root: yaml.Node | None, in_directory: bool = False) -> None:
        self.root = root
        self.in_directory = in_directory

    def problem(self, loc: Location, message: str) -> ConfigProblem:
        line, column = self.position(loc)
        file = self._file if self.in_directory else None
        return _problem(loc, message, line, column, file)

    def position(self, loc: Location) -> tuple[int | None, int | None]:
        node = self.root
        self._file: str | None = None
        if node is None:
            return None, None
        mark = node.start_mark
        for part in loc:
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                names = {part, to_camel(part)}
                found = None
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value in names:
                        found = (key, value)  # the last one wins, as in the loaded data
                if found is None:
                    break
                mark = found[0].start_mark
                node = found[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
                mark = node.start_mark
            else:
                break
        self._file = mark.name
        return mark.line + 1, mark.column + 1


def _duplicate_keys(node: yaml.Node | None, loc: Location) -> list[Location]:
    found: list[Location] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                if key.value in seen:
                    found.append((*loc, key.value))
                seen.add(key.value)
                found.extend(_duplicate_keys(value, (*loc, key.value)))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found.extend(_duplicate_keys(item, (*loc, i)))
    return found


def _get(mapping: Mapping[str, Any], key: str) -> Any:
    if key in mapping:
        return mapping[key]
    return mapping.get(to_camel(key))


def _partial_cross_references(raw: Mapping[str, Any]) -> list[tuple[Location, str]]:
    """Cross-reference problems among the parts of an invalid file that are valid alone."""
    tokens: TokensConfig | None = None
    raw_tokens = raw.get("tokens")
    if raw_tokens is None:
        tokens = TokensConfig()
    else:
        try:
            tokens = TokensConfig.model_validate(raw_tokens)
        except ValidationError:
            tokens = None
    issuers: list[tuple[int, IssuerConfig]] = []
    grants: list[tuple[int, GrantConfig]] = []
    raw_issuers = raw.get("issuers")
    if isinstance(raw_issuers, list):
        for i, item in enumerate(raw_issuers):
            try:
                issuers.append((i, IssuerConfig.model_validate(item)))
            except ValidationError:
                # Keep what the checks across items need from it (its name, URL and preset),
                # so that its own error neither misreports nor hides problems of the others.
                if not isinstance(item, Mapping) or not isinstance(_get(item, "name"), str):
                    continue
                url, preset = _get(item, "issuer"), _get(item, "preset")
                issuers.append((i, IssuerConfig.model_construct(
                    name=_get(item, "name"),
                    issuer=url if isinstance(url, str) else f"\x00{i}",
                    preset=preset if preset in PRESET_NAMES else None,
                )))
    raw_grants = raw.get("grants")
    if isinstance(raw_grants, list):
        for i, item in enumerate(raw_grants):
            try:
                grants.append((i, GrantConfig.model_validate(item)))
            except ValidationError:
                # Its name, issuer references, lifetime and match can still clash, dangle or
                # exceed a cap: keep each part that is valid on its own.
                if not isinstance(item, Mapping) or not isinstance(_get(item, "name"), str):
                    continue
                refs = _get(item, "issuers")
                ok_refs = isinstance(refs, list) and all(isinstance(r, str) for r in refs)
                lifetime = _get(item, "lifetime")
                grants.append(
                    (
                        i,
                        GrantConfig.model_construct(
                            name=_get(item, "name"),
                            issuers=tuple(refs) if ok_refs else None,
                            lifetime=lifetime if type(lifetime) is int and lifetime > 0 else None,
                            match=_valid_or_none(MatchConfig, _get(item, "match")),
                        ),
                    )
                )
    clients: list[tuple[int, RegisteredClient]] = []
    raw_clients = raw.get("clients")
    raw_registered = _get(raw_clients, "registered") if isinstance(raw_clients, Mapping) else None
    if isinstance(raw_registered, list):
        for i, item in enumerate(raw_registered):
            try:
                clients.append((i, RegisteredClient.model_validate(item)))
            except ValidationError:
                continue
    # Transaction tokens (docs/transaction-tokens.md): the section and the clients it names.
    raw_txn = raw.get("transaction_tokens")
    client_ids = {c for c in (_get(item, "client_id") for item in raw_registered if isinstance(item, Mapping))
                  if isinstance(c, str)} if isinstance(raw_registered, list) else set()
    try:
        txn_section: TransactionTokensConfig | None = TransactionTokensConfig.model_validate(raw_txn) if raw_txn is not None else None
    except ValidationError:
        txn_section = None
    txn_problems = transaction_token_problems(section=txn_section, section_present=raw_txn is not None, grants=grants,
                                              client_ids=client_ids)
    problems = cross_reference_problems(tokens=tokens, issuers=issuers, grants=grants, clients=clients,
                                        trust_domains=partial_trust_domains(raw)) + txn_problems + partial_profile_and_upstream_problems(
        raw, tokens, GrantConfig)  # docs/providers
    own = raw.get("issuer")
    if isinstance(own, str):
        chains_on = any(getattr(g, "delegation", None) is not None and g.delegation.chain for _, g in grants)
        problems += own_issuer_problems(own, [(i, iss.issuer) for i, iss in issuers], chains_on)
    return problems


def _valid_or_none(model: type[MatchConfig], raw: object) -> MatchConfig | None:
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None


def _issuer_files(raw: Mapping[str, Any], *field: str) -> list[tuple[Location, str | None, str]]:
    """Each issuer's file named at ``field`` (a path of keys inside the issuer), with its
    location and the issuer's name, from the raw document (before validation)."""
    out: list[tuple[Location, str | None, str]] = []
    raw_issuers = raw.get("issuers")
    if not isinstance(raw_issuers, list):
        return out
    for i, item in enumerate(raw_issuers):
        node: Any = item
        for key in field:
            node = _get(node, key) if isinstance(node, Mapping) else None
        if isinstance(node, str) and node.strip():
            name = _get(item, "name") if isinstance(item, Mapping) else None
            out.append((("issuers", i, *field), name if isinstance(name, str) else None, node))
    return out


def _read_jwks_file(base_dir: Path, rel: str) -> tuple[dict[str, Any] | None, list[str]]:
    p = resolve_path(base_dir, rel)
    hint = " (a relative path starts at the configuration file's directory)"
    try:
        if p.stat().st_size > MAX_JWKS_FILE_BYTES:
            return None, [f"jwks_file is larger than {MAX_JWKS_FILE_BYTES} bytes"]
        data = p.read_bytes()
    except FileNotFoundError:
        return None, [f"jwks_file not found{hint}"]
    except OSError as exc:
        return None, [f"jwks_file cannot be read ({type(exc).__name__}){hint}"]
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        line = getattr(exc, "lineno", None)
        return None, ["jwks_file is not valid JSON" + (f" (line {line})" if line else "")]
    problems = validate_jwks(doc)
    if problems:
        return None, [f"jwks_file: {m}" for m in problems]
    assert isinstance(doc, dict)
    return doc, []
