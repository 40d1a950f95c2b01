"""How the command line reports failures: one line on stderr, never a traceback for a mistake.

A user error (a bad setting, an invalid configuration, a missing or unmigrated database, a
wrong flag) is printed as ``sts: <problem>; <fix>`` and exits 2. Anything else is a bug: it
is printed as one line too, with the hint to rerun with ``--debug`` (or ``STS_DEBUG=1``) for
the traceback, and exits 70 (``EX_SOFTWARE`` of sysexits.h) so that a script can tell a crash
from a check that failed (exit 1).

:func:`as_user_error` is the one table from exception types to that line. An exception type
of any layer can join it without importing click: give the exception a ``fix`` attribute and
add its type here. Types are looked up through ``sys.modules``, so recognising an error never
imports a heavy module (an exception of a module that was never imported cannot occur).
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Final

import click

USER_ERROR_EXIT: Final = 2
BUG_EXIT: Final = 70
DEBUG_ENV: Final = "STS_DEBUG"


class UserError(click.ClickException):
    """A mistake the operator can fix. Invariant: ``problem`` and ``fix`` are one line each
    and repeat no secret."""

    exit_code = USER_ERROR_EXIT

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = _one_line(problem).rstrip(".")
        self.fix = _one_line(fix) if fix else None
        super().__init__(self.problem if self.fix is None else f"{self.problem}; {self.fix}")

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"sts: {self.format_message()}", file=file, err=file is None)


class UnexpectedError(UserError):
    """An exception nobody anticipated: a bug, reported in one line with how to see more."""

    exit_code = BUG_EXIT

    def __init__(self, exc: BaseException) -> None:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        what = type(exc).__name__ + (f": {detail}" if detail else "")
        super().__init__(
            f"unexpected error ({what})",
            f"this is a bug: rerun with --debug (or {DEBUG_ENV}=1) for the traceback and report it",
        )


def debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _type(module: str, name: str) -> type[BaseException] | None:
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _isinstance(exc: BaseException, module: str, name: str) -> bool:
    cls = _type(module, name)
    return cls is not None and isinstance(exc, cls)


def _fix_of(exc: BaseException) -> str | None:
    fix = getattr(exc, "fix", None)
    return fix if isinstance(fix, str) and fix else None


def _database_unreachable(exc: BaseException) -> BaseException | None:
    """The driver error when ``exc`` (or what it wraps) is a failure to reach the database."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return None
        if _isinstance(seen, "sqlalchemy.exc", "OperationalError") or _isinstance(seen, "sqlalchemy.exc", "InterfaceError"):
            return getattr(seen, "orig", None) or seen
        seen = seen.__cause__
    return None


def as_user_error(exc: BaseException) -> UserError | None:
    """The one line for ``exc`` when it is a mistake the operator can fix, else None."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, click.UsageError):
        where = f"`{exc.ctx.command_path} --help`" if exc.ctx is not None else "`sts --help`"
        return UserError(exc.format_message(), f"see {where}")
    if isinstance(exc, click.ClickException):
        plain = UserError(exc.format_message())
        plain.exit_code = exc.exit_code  # a command's own exit code keeps its meaning
        return plain
    if _isinstance(exc, "sts.settings", "SettingsError"):
        return UserError(str(exc), _fix_of(exc) or "see the settings table in docs/quickstart.md")
    if _isinstance(exc, "sts.config.loader", "ConfigInvalid"):
        return UserError(*exc.one_line())  # type: ignore[attr-defined]
    if _isinstance(exc, "sts.app", "StartupError"):
        return UserError(f"cannot start: {exc}", _fix_of(exc))
    if _isinstance(exc, "sts.store.db", "UnsupportedDatabaseURL"):
        return UserError(f"STS_DATABASE_URL: {exc}", _fix_of(exc))
    if _isinstance(exc, "sts.store.errors", "DatabaseMissing") or _isinstance(exc, "sts.store.errors", "SchemaNotCurrent"):
        return UserError(str(exc), _fix_of(exc))
    driver_error = _database_unreachable(exc)
    if driver_error is not None:
        detail = _one_line(str(driver_error).splitlines()[0] if str(driver_error) else type(driver_error).__name__)
        return UserError(f"database error ({detail[:200]})",
                         "check STS_DATABASE_URL, that the database server is up, and `sts db current`")
    if _isinstance(exc, "sts.store.errors", "StoreError"):
        return UserError(f"database error: {exc}", _fix_of(exc) or "check the database with `sts db current`")
    if isinstance(exc, OSError) and exc.filename is not None:
        reason = exc.strerror or type(exc).__name__
        return UserError(f"{exc.filename}: {reason}", "check the path and its permissions")
    return None


class ReportingGroup(click.Group):
    """The root ``sts`` group: every failure below it leaves through :func:`as_user_error`.

    Usage errors of the root itself are raised before ``invoke`` runs, so ``make_context``
    converts them too; those of subcommands surface inside ``invoke``.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            raise as_user_error(exc) or exc from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, click.exceptions.NoArgsIsHelpError):
            raise
        except Exception as exc:
            known = as_user_error(exc)
            if known is not None:
                if debug_requested() or ctx.params.get("debug"):
                    raise
                raise known from None
            if debug_requested() or ctx.params.get("debug"):
                raise
            raise UnexpectedError(exc) from None
