"""What a failing database means to a client: the one place driver errors become typed ones.

A request that needs the database while it is unreachable (PostgreSQL stopped or
restarting, the pool unable to connect) or while its disk is full (SQLite on a full
file system, PostgreSQL's ``could not extend file``) must answer 503 with a stable code
and ``Retry-After`` — never 500 ``internal_error``. The drivers say so in many ways
(``sqlite3.OperationalError`` "database or disk is full", asyncpg's
``DiskFullError`` or a refused connection, each wrapped by SQLAlchemy); ``storage_fault``
reads them all and answers ``StorageFullError`` or ``UnavailableError``.

``Database`` applies it where every read and write passes (``Database.session``,
``Database.connect``, ``Database.write``), so the doors — REST, WebSocket, SSE — only
ever see the typed errors; the problem handlers apply it once more as a last resort.
Errors that are not faults of the storage (a constraint, a missing table, a bug) are
left alone: they stay what they are.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

from atoll.errors import AtollError, StorageFullError, UnavailableError

STORAGE_FULL = "the database's disk is full: writes are refused until space is freed"
UNAVAILABLE = "the database is unavailable; try again later"

# SQLite result codes: primary ones are the low byte of ``sqlite3.Error.sqlite_errorcode``.
_SQLITE_FULL = 13
_SQLITE_IOERR_SHMSIZE = 10 | (19 << 8)
"""The WAL index (``-shm``) could not grow: on a full file system, SQLite says "disk I/O
error" where it means "disk full"."""
_SQLITE_UNAVAILABLE = frozenset(
    {
        5,  # SQLITE_BUSY: still locked after the busy timeout
        6,  # SQLITE_LOCKED
        7,  # SQLITE_NOMEM
        8,  # SQLITE_READONLY: e.g. the file system was remounted read-only
        10,  # SQLITE_IOERR: "disk I/O error"
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
    }
)
# PostgreSQL SQLSTATEs: 53100 disk_full; class 08 connection exceptions, class 53
# insufficient resources, class 58 system errors (I/O), 57P01-57P03 shutting down,
# crashed, or starting up.
_PG_FULL = "53100"
_PG_UNAVAILABLE_CLASSES = ("08", "53", "58")
_PG_UNAVAILABLE = frozenset({"57P01", "57P02", "57P03"})
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_fault(error: BaseException) -> UnavailableError | None:
    """The typed error ``error`` stands for if it is a fault of the storage, else None.

    ``StorageFullError`` when the disk is full, ``UnavailableError`` when the database
    cannot be reached or cannot do I/O. The whole wrapping chain is read (SQLAlchemy's
    ``orig``, ``raise … from``), not ``__context__``, which may be any error being handled
    when the database failed; a full disk wins over the disconnect it may cause.
    """
    if isinstance(error, UnavailableError):
        return error
    if isinstance(error, AtollError):
        return None
    kinds = {_kind(cause) for cause in _causes(error)}
    if "full" in kinds:
        return StorageFullError(STORAGE_FULL)
    if "unavailable" in kinds:
        return UnavailableError(UNAVAILABLE)
    return None


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and what it wraps, each once."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending and len(seen) < 16:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (getattr(current, "orig", None), current.__cause__):
            if isinstance(inner, BaseException):
                pending.append(inner)


def _kind(error: BaseException) -> str | None:
    """``"full"``, ``"unavailable"`` or None for one exception of the chain."""
    sqlite_code = getattr(error, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        primary = sqlite_code & 0xFF
        if primary == _SQLITE_FULL or sqlite_code == _SQLITE_IOERR_SHMSIZE:
            return "full"
        return "unavailable" if primary in _SQLITE_UNAVAILABLE else None
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        if sqlstate == _PG_FULL:
            return "full"
        if sqlstate.startswith(_PG_UNAVAILABLE_CLASSES) or sqlstate in _PG_UNAVAILABLE:
            return "unavailable"
        return None
    if isinstance(error, OSError):
        return "full" if error.errno in _FULL_ERRNOS else "unavailable"
    return _sqlalchemy_kind(error)


def _sqlalchemy_kind(error: BaseException) -> str | None:
    """SQLAlchemy's own word: a connection it invalidated, a pool that could not connect."""
    from sqlalchemy import exc

    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return "unavailable"
    if isinstance(error, exc.DisconnectionError | exc.TimeoutError):
        return "unavailable"  # TimeoutError: no pooled connection came free in time
    return None
