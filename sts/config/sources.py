"""Where a trust configuration comes from: one YAML file, or a directory of YAML files.

A directory is read as one configuration: every ``*.yaml`` and ``*.yml`` file under it
(hidden files and directories skipped, so a Kubernetes ConfigMap mount with its ``..data``
links reads as the files it holds), the files directly in the directory first, then those of
each subdirectory, each group in name order. Each file holds a YAML mapping with some of the
top-level keys of the configuration; they are merged key by key (``trust_domains`` and
``trustDomains`` are the same key): mappings merge their keys the same way, lists concatenate
in file order (``issuers/*.yaml`` and ``grants/*.yaml`` each add their items), and a scalar
value (``issuer``, ``tokens.max_lifetime``) may be set in one file only: a second one is a
problem that names both files and lines.

The version of a configuration is the first 12 hex digits of the SHA-256 of its
:attr:`ConfigSource.document_bytes`: a file's own bytes (as it always was), or for a directory a
canonical JSON document ``{"files": {relative path: text}}`` (sorted keys, no spaces), which is
also what the broker stores so that the exact text that decided can be shown again
(``sts config show``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic.alias_generators import to_snake

YAML_SUFFIXES: Final = (".yaml", ".yml")


class SourceError(Exception):
    """The configuration cannot be read at all (``message`` has no value from any file)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ConfigSource:
    """The bytes of a configuration as read. Invariant: ``files`` is non-empty; for a
    ``file`` it holds exactly that file (under its name); for a ``directory`` the relative
    paths (``/``-separated) in merge order."""

    kind: Literal["file", "directory"]
    files: tuple[tuple[str, bytes], ...]
    path: Path | None = None

    @property
    def document_bytes(self) -> bytes:
        if self.kind == "file":
            return self.files[0][1]
        return bundle_document({name: data.decode("utf-8", "replace") for name, data in self.files})

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.document_bytes).hexdigest()

    @property
    def version(self) -> str:
        return self.sha256[:12]


def bundle_document(files: Mapping[str, str]) -> bytes:
    """The canonical stored form of a directory configuration."""
    return json.dumps({"files": dict(files)}, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def files_of_document(document: str, kind: str, name: str = "sts.yaml") -> list[tuple[str, str]]:
    """The files of a stored document (the inverse of :attr:`ConfigSource.document_bytes`)."""
    if kind == "file":
        return [(name, document)]
    files = json.loads(document)["files"]
    return sorted(files.items(), key=lambda item: merge_order(item[0]))


def merge_order(relative: str) -> tuple[bool, tuple[str, ...]]:
    parts = tuple(relative.split("/"))
    return len(parts) > 1, parts


def read_source(path: Path, *, max_bytes: int) -> ConfigSource:
    """Read a configuration file or directory; raise :class:`SourceError`."""
    try:
        if path.is_dir():
            return _read_directory(path, max_bytes=max_bytes)
        if path.stat().st_size > max_bytes:
            raise SourceError("the configuration file is too large")
        return ConfigSource("file", ((path.name, path.read_bytes()),), path)
    except FileNotFoundError:
        raise SourceError("configuration file not found") from None
    except OSError as exc:
        raise SourceError(f"cannot read the configuration file ({type(exc).__name__})") from None


def _walk(root: Path) -> list[tuple[str, Path]]:
    """Every non-hidden file under ``root`` as ``(relative path, path)``. Symbolic links are
    followed (a Kubernetes ConfigMap mounts ``issuers -> ..data/issuers``), each real directory
    once, so a link back up cannot loop."""
    found: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for current, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(current)
        for name in names:
            if not name.startswith("."):
                found.append(((base / name).relative_to(root).as_posix(), base / name))
    return found


def _read_directory(root: Path, *, max_bytes: int) -> ConfigSource:
    found = [(rel, p) for rel, p in _walk(root) if p.suffix in YAML_SUFFIXES and p.is_file()]
    if not found:
        raise SourceError("the configuration directory holds no .yaml or .yml file")
    found.sort(key=lambda item: merge_order(item[0]))
    total = 0
    files: list[tuple[str, bytes]] = []
    for rel_name, p in found:
        data = p.read_bytes()
        total += len(data)
        if total > max_bytes:
            raise SourceError("the configuration directory is too large")
        files.append((rel_name, data))
    return ConfigSource("directory", tuple(files), root)


def latest_mtime(path: Path) -> float:
    """A value that changes when the configuration at ``path`` is edited: the file's mtime, or
    for a directory the newest mtime of the directory and its YAML files (0.0 if unreadable)."""
    try:
        if not path.is_dir():
            return path.stat().st_mtime
        # A ConfigMap update swaps the hidden ..data link: the files it leads to are new.
        newest = path.stat().st_mtime
        for _, p in _walk(path):
            newest = max(newest, p.stat().st_mtime)
        return newest
    except OSError:
        return 0.0


# --- composing and merging YAML nodes ------------------------------------------------------------


def compose(text: str, name: str, loader: Any) -> yaml.Node | None:
    """The node tree of one file; every mark carries ``name``. Raises ``yaml.YAMLError``."""
    stream = io.StringIO(text)
    stream.name = name  # type: ignore[misc]
    return yaml.compose(stream, Loader=loader)


def _key(node: yaml.Node) -> str | None:
    return to_snake(node.value) if isinstance(node, yaml.ScalarNode) and isinstance(node.value, str) else None


@dataclass(frozen=True)
class MergeConflict:
    """A value set in two files: where it is (a location in the merged document), the first
    place as ``(file, line)`` and the second as ``(file, line, column)``."""

    location: tuple[str | int, ...]
    first: tuple[str, int]
    second: tuple[str, int, int]


def merge(into: yaml.MappingNode, other: yaml.MappingNode, loc: tuple[str | int, ...] = ()) -> list[MergeConflict]:
    """Merge ``other`` into ``into`` in place (see the module docstring for the rules)."""
    conflicts: list[MergeConflict] = []
    # A key repeated inside one file is that file's duplicate-key problem: YAML keeps the last.
    last = {_key(k): i for i, (k, _) in enumerate(other.value)}
    mine = list(into.value)
    for i, (key_node, value) in enumerate(other.value):
        key = _key(key_node)
        if key is not None and last[key] != i:
            continue
        existing = None
        if key is not None:
            for k, v in mine:
                if _key(k) == key:
                    existing = (k, v)
        if existing is None:
            into.value.append((key_node, value))
            continue
        old_key, old_value = existing
        where = (*loc, key or "?")
        if isinstance(old_value, yaml.MappingNode) and isinstance(value, yaml.MappingNode):
            conflicts.extend(merge(old_value, value, where))
        elif isinstance(old_value, yaml.SequenceNode) and isinstance(value, yaml.SequenceNode):
            old_value.value.extend(value.value)
        else:
            conflicts.append(MergeConflict(
                where,
                (old_key.start_mark.name, old_key.start_mark.line + 1),
                (key_node.start_mark.name, key_node.start_mark.line + 1, key_node.start_mark.column + 1),
            ))
    return conflicts
