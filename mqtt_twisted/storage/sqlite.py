"""A store in one SQLite file (standard library ``sqlite3``), committed off the reactor thread.

The file is checked before anything is written to it: something that is not an SQLite
database, is damaged, holds someone else's tables or a newer schema is refused with a
:class:`~mqtt_twisted.broker.records.StoreError` and left as it is (or, with
``recover="move-aside"``, renamed out of the way unless its schema is newer). Each
:class:`~mqtt_twisted.broker.records.Batch` is one transaction on a dedicated worker thread;
the journal is a WAL, truncated after checkpoints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from mqtt_twisted.broker.records import (
    SCHEMA_VERSION,
    Batch,
    DeliveryRecord,
    MessageRecord,
    RetainedRecord,
    SessionRecord,
    Snapshot,
    StoreError,
    SubscriptionRecord,
    WillRecord,
)
from mqtt_twisted.packets.constants import PacketType
from mqtt_twisted.packets.errors import PacketError
from mqtt_twisted.packets.properties import WILL, decode_properties, encode_properties
from mqtt_twisted.packets.wire import Reader

#: the WAL file is cut back to this size after a checkpoint
JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024
SYNCHRONOUS = ("full", "normal")
RECOVER = ("fail", "move-aside")

#: MIGRATIONS[n] turns a version n database into version n + 1 (inside a transaction)
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {}

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sessions (
    client_id TEXT PRIMARY KEY, protocol_level INTEGER NOT NULL, expiry_interval REAL,
    username TEXT, disconnected_at REAL, will_topic TEXT, will_payload BLOB,
    will_qos INTEGER, will_retain INTEGER, will_properties BLOB, will_publish_at REAL);
CREATE TABLE subscriptions (
    client_id TEXT NOT NULL, topic_filter TEXT NOT NULL, qos INTEGER NOT NULL,
    no_local INTEGER NOT NULL, retain_as_published INTEGER NOT NULL,
    retain_handling INTEGER NOT NULL, subscription_id INTEGER,
    PRIMARY KEY (client_id, topic_filter)) WITHOUT ROWID;
CREATE TABLE messages (
    message_id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, properties BLOB NOT NULL, expires_at REAL);
CREATE TABLE deliveries (
    client_id TEXT NOT NULL, seq INTEGER NOT NULL, message_id INTEGER NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, subscription_ids TEXT NOT NULL,
    packet_id INTEGER, released INTEGER NOT NULL,
    PRIMARY KEY (client_id, seq)) WITHOUT ROWID;
CREATE TABLE inbound (
    client_id TEXT NOT NULL, packet_id INTEGER NOT NULL,
    PRIMARY KEY (client_id, packet_id)) WITHOUT ROWID;
CREATE TABLE retained (
    topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    properties BLOB NOT NULL, expires_at REAL);
CREATE TABLE totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_PURGED_TABLES = ("sessions", "subscriptions", "deliveries", "inbound")
#: columns read and written, by table (named, so that a migration may add columns)
_COLUMNS = {
    "sessions": "client_id, protocol_level, expiry_interval, username, disconnected_at, "
    "will_topic, will_payload, will_qos, will_retain, will_properties, will_publish_at",
    "subscriptions": "client_id, topic_filter, qos, no_local, retain_as_published, "
    "retain_handling, subscription_id",
    "messages": "message_id, topic, payload, qos, retain, properties, expires_at",
    "deliveries": "client_id, seq, message_id, qos, retain, subscription_ids, packet_id, released",
    "inbound": "client_id, packet_id",
    "retained": "topic, payload, qos, properties, expires_at",
    "totals": "name, value",
}
TABLES = frozenset(("meta", *_COLUMNS))
#: how many of its first columns make a table's primary key
_KEY_COLUMNS = {"subscriptions": 2, "deliveries": 2, "inbound": 2}
_WRITABLE = "; check that the file and its directory exist and are writable"
_MOVE_ASIDE = "or start with --store-recover move-aside to set it aside and begin empty"


class _Unusable(Exception):
    """The file is damaged or not ours: refused, or moved aside on request."""


class SQLiteStore:
    """:class:`~mqtt_twisted.broker.records.StoreBackend` in the SQLite file ``path``.

    Opening is synchronous (it runs at start-up) and raises StoreError with one line.
    ``synchronous="full"`` makes every commit survive a power loss; ``"normal"`` only a
    crash of the process. ``moved_aside`` is where a damaged file went, if it was moved.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        reactor: Any,  # IReactorCore and IReactorFromThreads
        synchronous: str = "full",
        recover: str = "fail",
    ) -> None:
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}, not {synchronous!r}")
        if recover not in RECOVER:
            raise ValueError(f"recover must be one of {RECOVER}, not {recover!r}")
        self.path = Path(os.path.abspath(path))
        self.description = f"sqlite:{self.path} (synchronous {synchronous})"
        self.moved_aside: Path | None = None
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="mqtt-store")
        self._trigger: Any = None
        self._closed = False
        version = self._check_path(recover)
        self._lock = self._lock_file()
        try:
            self._conn = self._open(version, synchronous)
        except BaseException:
            os.close(self._lock)
            raise

    # -- opening ---------------------------------------------------------------------------

    def _check_path(self, recover: str) -> int:
        """The schema version found in the file (0: none, start a new store)."""
        path = self.path
        if path.is_dir():
            raise StoreError(f"store {path} is a directory: give the path of a file")
        if not path.exists():
            parent = path.parent
            if not parent.exists():
                raise StoreError(f"cannot create store {path}: directory {parent} does not exist")
            if not parent.is_dir():
                raise StoreError(f"cannot create store {path}: {parent} is not a directory")
            return 0
        try:
            return _inspect(path)
        except _Unusable as exc:
            if recover != "move-aside":
                raise StoreError(
                    f"store {path} is {exc}: move it away or delete it, {_MOVE_ASIDE}"
                ) from None
        self.moved_aside = _move_aside(path)
        return 0

    def _lock_file(self) -> int:
        """Hold an exclusive flock on the file while the store is open, so that a second
        broker started on it stops at once instead of interleaving its writes with ours
        (SQLite's own locks are per transaction). The kernel drops it when the process
        ends, however it ends."""
        path = self.path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot open store {path}: {exc.strerror}{_WRITABLE}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"store {path} is in use by another process (another broker on the same "
                "file?): stop it, or give this one another --store"
            ) from None
        return fd

    def _open(self, version: int, synchronous: str) -> sqlite3.Connection:
        path = self.path
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {_line(exc)}{_WRITABLE}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"store {path}: cannot switch to WAL (journal mode {mode})")
            conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
            if version == 0:
                created = datetime.now(UTC).isoformat(timespec="seconds")
                with _transaction(conn):
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.executemany(
                        "INSERT INTO meta VALUES (?, ?)",
                        [("schema_version", str(SCHEMA_VERSION)), ("created", created)],
                    )
                version = SCHEMA_VERSION
            while version < SCHEMA_VERSION:
                with _transaction(conn):
                    MIGRATIONS[version](conn)
                    version += 1
                    conn.execute(
                        "UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(version),)
                    )
        except StoreError:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open store {path}: {_line(exc)}{_WRITABLE}") from exc
        return conn

    # -- StoreBackend ----------------------------------------------------------------------

    def load(self) -> Snapshot:
        """Everything committed; drops (in the file too) messages no delivery refers to."""
        conn = self._conn
        snap = Snapshot()
        try:
            with _transaction(conn):
                conn.execute(
                    "DELETE FROM messages WHERE message_id NOT IN (SELECT message_id FROM deliveries)"
                )
                for row in _select(conn, "sessions"):
                    will = None
                    if row[5] is not None:
                        props = _props(row[9], WILL)
                        will = WillRecord(row[5], row[6], row[7], bool(row[8]), props, row[10])
                    snap.sessions[row[0]] = SessionRecord(
                        row[0], row[1], row[2], row[3], row[4], will
                    )
                for row in _select(conn, "subscriptions", " ORDER BY 1, 2"):
                    sub = SubscriptionRecord(row[0], row[1], row[2], *map(bool, row[3:5]), *row[5:])
                    snap.subscriptions.setdefault(row[0], []).append(sub)
                for row in _select(conn, "messages"):
                    snap.messages[row[0]] = MessageRecord(
                        row[0], row[1], row[2], row[3], bool(row[4]), _props(row[5]), row[6]
                    )
                for row in _select(conn, "deliveries", " ORDER BY 1, 2"):
                    ids = tuple(int(i) for i in row[5].split(",") if i)
                    d = DeliveryRecord(
                        row[0], row[1], row[2], row[3], bool(row[4]), ids, row[6], bool(row[7])
                    )
                    snap.deliveries.setdefault(row[0], []).append(d)
                for client_id, packet_id in _select(conn, "inbound"):
                    snap.inbound.setdefault(client_id, set()).add(packet_id)
                for row in _select(conn, "retained", " ORDER BY 1"):
                    props = _props(row[3])
                    snap.retained.append(RetainedRecord(row[0], row[1], row[2], props, row[4]))
                snap.totals.update(_select(conn, "totals"))
        except (sqlite3.Error, PacketError) as exc:
            raise StoreError(f"store {self.path}: cannot load: {_line(exc)}") from exc
        return snap

    def commit(self, batch: Batch) -> Deferred[None]:
        """Write ``batch`` as one transaction on the store's thread; fails with StoreError."""
        if self._closed:
            return fail(StoreError(f"store {self.path} is closed"))
        if not self._pool.started:
            self._pool.start()
            self._trigger = self._reactor.addSystemEventTrigger(
                "during", "shutdown", self._stop_pool
            )
        return deferToThreadPool(self._reactor, self._pool, self._write, batch)

    def close(self) -> Deferred[None]:
        """After a running commit: checkpoint (truncating the WAL), close, stop the thread."""
        if self._closed:
            return succeed(None)
        self._closed = True
        if not self._pool.started:
            try:
                self._shut()
            except StoreError:
                return fail()
            return succeed(None)
        d = deferToThreadPool(self._reactor, self._pool, self._shut)
        return d.addBoth(self._stop_pool)

    # -- on the store's thread -------------------------------------------------------------

    def _write(self, batch: Batch) -> None:
        writes: list[tuple[str, list[Any]]] = []
        if batch.purged:
            purged = [(c,) for c in batch.purged]
            writes += [(f"DELETE FROM {t} WHERE client_id = ?", purged) for t in _PURGED_TABLES]
        tables: list[tuple[str, dict[Any, Any], Callable[[Any], tuple[Any, ...]]]] = [
            ("sessions", batch.sessions, _session_row),
            ("subscriptions", batch.subscriptions, _subscription_row),
            ("messages", batch.messages, _message_row),
            ("deliveries", batch.deliveries, _delivery_row),
            ("retained", batch.retained, _retained_row),
            ("inbound", {k: k if v else None for k, v in batch.inbound.items()}, tuple),
            ("totals", {k: (k, v) for k, v in batch.totals.items()}, tuple),
        ]
        for table, changes, row in tables:
            if not changes:
                continue
            upserts: list[tuple[Any, ...]] = []
            deletes: list[tuple[Any, ...]] = []
            for key, record in changes.items():
                if record is None:
                    deletes.append(key if isinstance(key, tuple) else (key,))
                else:
                    upserts.append(row(record))
            writes.append((_delete(table), deletes))
            writes.append((_insert(table), upserts))
        try:
            with _transaction(self._conn):
                for sql, rows in writes:
                    if rows:
                        self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: commit failed: {_line(exc)}") from exc

    def _shut(self) -> None:
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise StoreError(
                f"store {self.path}: checkpoint at close failed: {_line(exc)}"
            ) from exc
        finally:
            self._conn.close()
            with contextlib.suppress(OSError):
                os.close(self._lock)

    def _stop_pool(self, result: object = None) -> object:
        if self._trigger is not None:
            trigger, self._trigger = self._trigger, None
            with contextlib.suppress(ValueError):  # already fired: it is this call
                self._reactor.removeSystemEventTrigger(trigger)
        if self._pool.started:
            self._pool.stop()
        return result


class _transaction:
    """``with _transaction(conn):`` BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        try:
            if kind is None:
                self.conn.execute("COMMIT")
                return
        except BaseException:
            self._rollback()
            raise
        self._rollback()

    def _rollback(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the original error is the one to report


def _inspect(path: Path) -> int:
    """The schema version of the existing file ``path`` (0: holds no tables); read-only.

    Raises StoreError for a newer schema or a file that cannot be read, _Unusable when
    the file is damaged or someone else's.
    """
    wal, shm = (path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))
    had_wal = wal.exists()
    try:
        conn = sqlite3.connect(path.as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {_line(exc)}{_WRITABLE}") from exc
    try:
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise _Unusable(f"a damaged database ({problems[0]})")
        if not tables:
            return 0
        if "meta" not in tables:
            names = ", ".join(sorted(tables)[:5])
            raise _Unusable(f"an SQLite database of something else (tables {names})")
        row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        version = int(row[0]) if row is not None and str(row[0]).isdigit() else 0
    except sqlite3.Error as exc:
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (
            sqlite3.SQLITE_CORRUPT,
            sqlite3.SQLITE_NOTADB,
        ):
            raise _Unusable(f"not an SQLite database or damaged ({_line(exc)})") from exc
        raise StoreError(f"cannot read store {path}: {_line(exc)}") from exc
    finally:
        conn.close()
        if not had_wal and wal.exists() and not wal.stat().st_size:  # made by reading a WAL db
            wal.unlink()
            shm.unlink(missing_ok=True)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema version {version}, newer than this broker's "
            f"{SCHEMA_VERSION}: run a newer mqtt-twisted or choose another store path"
        )
    if version < 1:
        raise _Unusable("an SQLite database with a meta table but no schema_version of ours")
    if version == SCHEMA_VERSION and not TABLES <= tables:
        missing = ", ".join(sorted(TABLES - tables))
        raise _Unusable(f"an incomplete mqtt-twisted store (tables {missing} missing)")
    if version < SCHEMA_VERSION and any(
        v not in MIGRATIONS for v in range(version, SCHEMA_VERSION)
    ):
        raise StoreError(f"store {path}: no migration from schema version {version}")
    return version


def _move_aside(path: Path) -> Path:
    """Rename ``path`` (and its -wal, -shm, -journal files) to PATH.corrupt-<UTC time>."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        for suffix in ("-wal", "-shm", "-journal"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
        path.rename(target)
    except OSError as exc:
        raise StoreError(f"cannot move store {path} aside to {target}: {exc.strerror}") from exc
    return target


def _line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _props(buf: bytes, packet_type: int = PacketType.PUBLISH) -> dict[int, Any]:
    return decode_properties(Reader(buf, 0, len(buf)), packet_type)


def _select(conn: sqlite3.Connection, table: str, order: str = "") -> sqlite3.Cursor:
    return conn.execute(f"SELECT {_COLUMNS[table]} FROM {table}{order}")


def _delete(table: str) -> str:
    key = _COLUMNS[table].split(", ")[: _KEY_COLUMNS.get(table, 1)]
    return f"DELETE FROM {table} WHERE " + " AND ".join(f"{c} = ?" for c in key)


def _insert(table: str) -> str:
    marks = ",".join("?" * len(_COLUMNS[table].split(",")))
    return f"INSERT OR REPLACE INTO {table} ({_COLUMNS[table]}) VALUES ({marks})"


def _session_row(s: SessionRecord) -> tuple[Any, ...]:
    w = s.will
    if w is None:
        return (*s[:5], None, None, None, None, None, None)
    will = (w.topic, w.payload, w.qos, int(w.retain), encode_properties(w.properties))
    return (*s[:5], *will, w.publish_at)


def _subscription_row(s: SubscriptionRecord) -> tuple[Any, ...]:
    return (*s[:3], int(s.no_local), int(s.retain_as_published), *s[5:])


def _message_row(m: MessageRecord) -> tuple[Any, ...]:
    return (*m[:4], int(m.retain), encode_properties(m.properties), m.expires_at)


def _delivery_row(d: DeliveryRecord) -> tuple[Any, ...]:
    ids = ",".join(str(int(i)) for i in d.subscription_ids)
    return (*d[:4], int(d.retain), ids, d.packet_id, int(d.released))


def _retained_row(r: RetainedRecord) -> tuple[Any, ...]:
    return (*r[:3], encode_properties(r.properties), r.expires_at)
