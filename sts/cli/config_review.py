"""``sts config diff | history | show | schema``: review a change of trust before it is live.

Exit codes (docs/trust-changes.md):

* ``sts config diff``: 0 nothing widens (narrowings and neutral changes may exist), 3 something
  widens or may widen (CI requires a review), 2 a user error (a file that does not load, no
  database, an unknown version);
* ``history``, ``show``, ``schema``: 0, or 2 for a user error.

``--against-running`` compares with the version the broker serves, read from the database the
broker writes (``config_versions``): the version most recently loaded by any replica. The
database, not a broker's HTTP port, is the source because it is what the audit records refer to,
it needs no extra listener, and during a rolling update it names the newest version (compare
with an older one with ``--against VERSION``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from sts.cli.errors import UserError

DIFF_WIDENS_EXIT = 3

_LABEL = {"widens": "widens", "may_widen": "may widen", "narrows": "narrows", "neutral": "neutral"}


def _emit(data: Any, as_json: bool, human: str) -> None:
    click.echo(json.dumps(data, indent=2, default=str) if as_json else human)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"


def _repository(database_url: str | None) -> Any:
    from sts.cli.main import _open_database, _settings
    from sts.store.config_versions import ConfigVersionRepository

    return ConfigVersionRepository(_open_database(_settings(database_url=database_url).database_url))


def _stored(repo: Any, name: str) -> Any:
    from sts.store.config_versions import AmbiguousVersion, UnknownVersion

    try:
        return repo.get(name)
    except (UnknownVersion, AmbiguousVersion) as exc:
        raise UserError(str(exc), exc.fix) from None


def _source_of_record(record: Any) -> Any:
    from sts.config.sources import ConfigSource, files_of_document

    name = Path(record.source).name or "sts.yaml"
    files = tuple((n, text.encode("utf-8")) for n, text in files_of_document(record.document, record.kind, name))
    return ConfigSource(record.kind, files, None)


def _model(source: Any, label: str) -> Any:
    from sts.config.loader import ConfigInvalid, parse_document

    try:
        return parse_document(source)
    except ConfigInvalid as exc:
        count = len(exc.problems)
        first = f"; first: {exc.problems[0]}" if exc.problems else ""
        check = f"`sts config check {source.path}`" if source.path is not None else "`sts config check`"
        raise UserError(f"{label} does not load ({count} problem{'s' if count != 1 else ''}{first})",
                        f"run {check} to see every problem") from None


def _read(path: Path) -> Any:
    from sts.config.loader import MAX_CONFIG_BYTES
    from sts.config.sources import SourceError, read_source

    try:
        return read_source(path, max_bytes=MAX_CONFIG_BYTES)
    except SourceError as exc:
        raise UserError(f"{path}: {exc.message}", "give a configuration file or directory") from None


@click.command("diff")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--against-running", is_flag=True,
              help="compare PATH with the configuration the broker serves (the latest stored version)")
@click.option("--against", "against", metavar="VERSION", help="compare PATH with this stored version")
@click.option("--database-url", help="SQLAlchemy URL (STS_DATABASE_URL), with --against-running or --against")
@click.option("--json", "as_json", is_flag=True)
def diff(paths: tuple[Path, ...], against_running: bool, against: str | None, database_url: str | None, as_json: bool) -> None:
    """What a change of configuration does to trust: `sts config diff OLD NEW`, or
    `sts config diff NEW --against-running`. OLD and NEW are files or directories.

    Widenings come first, marked with "!". Exit 3 when anything widens or may widen (a review
    is needed), 0 otherwise, 2 when an input does not load."""
    from sts.config.diff import diff_configs

    stored = against_running or against is not None
    if against_running and against is not None:
        raise UserError("--against-running and --against exclude each other", "give one of them")
    if stored and len(paths) != 1:
        raise UserError("with --against-running or --against, give one path (the new configuration)",
                        "sts config diff NEW --against-running")
    if not stored and len(paths) != 2:
        raise UserError("give the old and the new configuration", "sts config diff OLD NEW (or NEW --against-running)")
    if stored:
        repo = _repository(database_url)
        if against is not None:
            record = _stored(repo, against)
        else:
            record = repo.latest()
            if record is None:
                raise UserError("the database holds no configuration version yet (no broker has started on it)",
                                "compare two files with `sts config diff OLD NEW`")
        old_source = _source_of_record(record)
        old_label = f"{'running' if against_running else 'stored'} version {record.version}"
        old_desc = {"source": "database", "version": record.version, "running": against_running,
                    "loaded_from": record.source}
        new_source = _read(paths[0])
        new_label = str(paths[0])
    else:
        old_source, new_source = _read(paths[0]), _read(paths[1])
        old_label, new_label = str(paths[0]), str(paths[1])
        old_desc = {"source": old_label, "version": old_source.version}
    old = _model(old_source, old_label)
    new = _model(new_source, new_label)
    result = diff_configs(old, new)

    data = {"old": old_desc, "new": {"source": new_label, "version": new_source.version}, **result.as_dict()}
    old_head = old_label if stored else f"{old_label} ({old_source.version})"
    lines = [f"{old_head} -> {new_label} ({new_source.version})"]
    if not result.changes:
        lines.append("no change to trust" + (" (the same configuration)" if old_source.sha256 == new_source.sha256 else
                                            " (the files differ only in form: comments, order, spelling)"))
    width = max(len(v) for v in _LABEL.values())
    for c in result.changes:
        mark = "!" if c.widening else " "
        lines.append(f"{mark} {_LABEL[c.effect]:<{width}}  {c.where()}: {c.summary}")
    if result.changes:
        counts = result.counts()
        lines.append(f"{len(result.changes)} change{'s' if len(result.changes) != 1 else ''}: "
                     + ", ".join(f"{n} {_LABEL[e]}" for e, n in counts.items() if n))
    if result.widens:
        lines.append("trust widens: review the changes marked ! (exit 3)")
    _emit(data, as_json, "\n".join(lines))
    sys.exit(DIFF_WIDENS_EXIT if result.widens else 0)


@click.command("history")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--database-url", help="SQLAlchemy URL (STS_DATABASE_URL)")
@click.option("--json", "as_json", is_flag=True)
def history(limit: int, database_url: str | None, as_json: bool) -> None:
    """Configuration versions the brokers loaded, the most recent first (* marks the one
    loaded last: the running one)."""
    rows = _repository(database_url).history(limit)
    data = [dict(r.summary(), latest=i == 0) for i, r in enumerate(rows)]
    lines = [f"  {'VERSION':<12}  {'LAST LOADED':<20}  {'FIRST LOADED':<20}  {'KIND':<9}  {'LOADED BY':<24}  SOURCE"]
    lines += [f"{'*' if d['latest'] else ' '} {d['version']:<12}  {_when(d['last_loaded_at']):<20}  {_when(d['first_loaded_at']):<20}  "
              f"{d['kind']:<9}  {d['loaded_by'][:24]:<24}  {d['source']}" for d in data]
    _emit(data, as_json, "\n".join(lines) if data else "(no configuration version stored yet: none is until a broker starts)")


@click.command("show")
@click.argument("version")
@click.option("--database-url", help="SQLAlchemy URL (STS_DATABASE_URL)")
@click.option("--json", "as_json", is_flag=True)
def show(version: str, database_url: str | None, as_json: bool) -> None:
    """Print the exact configuration of a stored VERSION (as audit records name it: 12 hex
    digits, or any unambiguous prefix of 4 or more). A file prints byte for byte as it was; a
    directory prints each file after a `# ==> NAME <==` line (--json: each file exactly)."""
    from sts.config.sources import files_of_document

    record = _stored(_repository(database_url), version)
    files = files_of_document(record.document, record.kind, Path(record.source).name or "sts.yaml")
    data = {**record.summary(), "files": dict(files)}
    if as_json:
        _emit(data, True, "")
    elif record.kind == "file":
        # Byte for byte: `sts config show V > f.yaml` gives back the file whose SHA-256 is V.
        click.echo(record.document, nl=False)
    else:
        click.echo("\n".join(f"# ==> {name} <==\n{text.rstrip(chr(10))}" for name, text in files))


@click.command("schema")
@click.option("--part", is_flag=True, help="the schema of one file of a configuration directory (nothing required)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write it to this file instead of standard output")
def schema(part: bool, out: Path | None) -> None:
    """Print the JSON Schema of the trust configuration (docs/sts-config.schema.json), for
    editors and CI. The loader (`sts config check`) checks more than the schema can."""
    from sts.config.schema import schema_text

    text = schema_text(part=part)
    if out is None:
        click.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8")
    click.echo(f"wrote {out}", err=True)


COMMANDS = (diff, history, show, schema)
