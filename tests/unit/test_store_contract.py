"""Store backends: one contract for MemoryStore and SQLiteStore, then SQLite's own checks.

The SQLite tests run on the real reactor (pytest-twisted), so commits go through the
store's own thread; "reopen" closes the file and opens it again, as a restart does.
"""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest
import pytest_twisted
from twisted.internet import reactor

from mqtt_twisted.broker.records import (
    SCHEMA_VERSION,
    Batch,
    DeliveryRecord,
    InboundKey,
    MessageRecord,
    RetainedRecord,
    SessionRecord,
    Snapshot,
    StoreError,
    SubscriptionRecord,
    WillRecord,
)
from mqtt_twisted.packets.constants import Property as P
from mqtt_twisted.storage import MemoryStore, SQLiteStore, open_store
from mqtt_twisted.storage import sqlite as sqlite_module

PROPS = {
    P.PAYLOAD_FORMAT_INDICATOR: 1,
    P.MESSAGE_EXPIRY_INTERVAL: 3600,
    P.CONTENT_TYPE: "application/json; charset=ütf-8",
    P.RESPONSE_TOPIC: "reply/here",
    P.CORRELATION_DATA: b"\x00corr\xff\x00",
    P.USER_PROPERTY: [("k", "v1"), ("k", "v2"), ("ключ", ""), ("", "empty name")],
}
WILL = WillRecord("will/t", b"\x00bye\x00", 1, True, {P.CONTENT_TYPE: "text/plain"}, 1234.5)
SESSIONS = [
    SessionRecord("c1", 5, 3600.0, "alice", None, WILL),
    SessionRecord("c2", 4, None, None, 99.25),  # never expires, no will
    SessionRecord("c3", 5, 0.5, "ßob", 1_700_000_000.125, WILL._replace(properties={})),
]
SUBS = [
    SubscriptionRecord("c1", "a/+/b", 2, True, True, 2, 268_435_455),
    SubscriptionRecord("c1", "#", 0),
    SubscriptionRecord("c2", "$share/g/x", 1, False, True, 1, 7),
]
MESSAGES = [
    MessageRecord(1, "t/1", b"\x00\x01\x02\x00", 1, False, PROPS, None),
    MessageRecord(2, "t/2", b"", 2, True, {}, 1_700_000_123.75),
    MessageRecord(2**40, "t/big", bytes(range(256)) * 40, 1, False, {P.CONTENT_TYPE: ""}, 5.0),
]
DELIVERIES = [
    DeliveryRecord("c1", 1, 1, 1, False, (), None),
    DeliveryRecord("c1", 2, 2, 2, True, (1, 268_435_455), 65535, True),
    DeliveryRecord("c1", 3, 2**40, 1, False, (3,), 1, False),
    DeliveryRecord("c2", 1, 2, 2, False, (2, 5, 9), None, False),
]
RETAINED = [
    RetainedRecord("r/1", b"\x00\xff", 1, PROPS, None),
    RetainedRecord("r/2", b"plain", 0, {}, 42.5),
]


def full_batch() -> Batch:
    b = Batch()
    b.sessions = {s.client_id: s for s in SESSIONS}
    b.subscriptions = {(s.client_id, s.topic_filter): s for s in SUBS}
    b.messages = {m.message_id: m for m in MESSAGES}
    b.deliveries = {(d.client_id, d.seq): d for d in DELIVERIES}
    b.inbound = {InboundKey("c1", 7): True, InboundKey("c1", 65535): True, ("c2", 1): True}
    b.retained = {r.topic: r for r in RETAINED}
    b.totals = {"clients_maximum": 12, "messages_received": 2**40}
    return b


class Handle:
    """The store under test, and a restart of it."""

    def __init__(self, kind: str, path) -> None:
        self.kind, self.path = kind, path
        self.store = self._open()

    def _open(self):
        return MemoryStore() if self.kind == "memory" else SQLiteStore(self.path, reactor)

    async def reopen(self):
        if self.kind == "sqlite":
            await self.store.close()
            self.store = self._open()
        return self.store

    async def commit(self, batch: Batch) -> None:
        await self.store.commit(batch)

    async def reloaded(self) -> Snapshot:
        return (await self.reopen()).load()


@pytest.fixture(params=["memory", "sqlite"])
def h(request, tmp_path):
    handle = Handle(request.param, tmp_path / "s.sqlite")
    yield handle
    pytest_twisted.blockon(handle.store.close())


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(tmp_path / "s.sqlite", reactor)
    yield s
    pytest_twisted.blockon(s.close())


def plain(snap: Snapshot) -> dict:
    return {
        "sessions": snap.sessions,
        "subscriptions": snap.subscriptions,
        "messages": snap.messages,
        "deliveries": snap.deliveries,
        "inbound": snap.inbound,
        "retained": snap.retained,
        "totals": snap.totals,
    }


# -- the contract --------------------------------------------------------------------------


def test_empty_store_loads_empty(h):
    assert h.store.load() == Snapshot()
    if h.kind == "memory":
        assert h.store.description == "memory"
    else:
        assert h.store.description == f"sqlite:{h.path} (synchronous full)"


@pytest_twisted.ensureDeferred
async def test_every_record_round_trips_exactly(h):
    await h.commit(full_batch())
    snap = await h.reloaded()
    assert snap.sessions == {s.client_id: s for s in SESSIONS}
    assert snap.subscriptions == {
        "c1": sorted(SUBS[:2], key=lambda s: s.topic_filter),
        "c2": [SUBS[2]],
    }
    assert snap.messages == {m.message_id: m for m in MESSAGES}
    assert snap.deliveries == {"c1": DELIVERIES[:3], "c2": [DELIVERIES[3]]}
    assert snap.inbound == {"c1": {7, 65535}, "c2": {1}}
    assert snap.retained == RETAINED
    assert snap.totals == {"clients_maximum": 12, "messages_received": 2**40}
    # types too, not just equality
    c1 = snap.sessions["c1"]
    assert c1.will is not None and type(c1.will.retain) is bool
    assert snap.sessions["c2"].expiry_interval is None and snap.sessions["c2"].will is None
    assert snap.messages[1].properties[P.USER_PROPERTY] == PROPS[P.USER_PROPERTY]
    assert type(snap.messages[1].properties[P.CORRELATION_DATA]) is bytes
    assert [type(d.released) for d in snap.deliveries["c1"]] == [bool] * 3
    assert all(type(s.no_local) is bool for s in snap.subscriptions["c1"])
    assert snap.deliveries["c1"][1].subscription_ids == (1, 268_435_455)
    assert type(snap.messages[2].payload) is bytes and snap.messages[2].payload == b""


@pytest_twisted.ensureDeferred
async def test_later_commits_override_and_none_deletes(h):
    await h.commit(full_batch())
    b = Batch()
    b.sessions = {"c1": SESSIONS[0]._replace(will=None, disconnected_at=5.0), "c2": None}
    b.subscriptions = {("c1", "#"): SUBS[1]._replace(qos=2), ("c1", "a/+/b"): None}
    b.messages = {1: None, 3: MESSAGES[0]._replace(message_id=3, payload=b"new")}
    b.deliveries = {
        ("c1", 1): None,
        ("c1", 2): DELIVERIES[1]._replace(released=False, packet_id=None),
        ("c2", 4): DELIVERIES[3]._replace(seq=4, message_id=3),
    }
    b.retained = {"r/1": None, "r/2": RETAINED[1]._replace(payload=b"v2", expires_at=None)}
    b.totals = {"clients_maximum": 13}
    await h.commit(b)
    # deleting keys that are not there is fine
    missing = Batch(
        sessions={"nobody": None},
        subscriptions={("nobody", "x"): None},
        messages={999: None},
        deliveries={("nobody", 1): None},
        inbound={InboundKey("nobody", 1): False},
        retained={"no/such": None},
    )
    await h.commit(missing)
    snap = await h.reloaded()
    assert snap.sessions == {
        "c1": SESSIONS[0]._replace(will=None, disconnected_at=5.0),
        "c3": SESSIONS[2],
    }
    assert snap.subscriptions == {"c1": [SUBS[1]._replace(qos=2)], "c2": [SUBS[2]]}
    assert snap.deliveries == {
        "c1": [DELIVERIES[1]._replace(released=False, packet_id=None), DELIVERIES[2]],
        "c2": [DELIVERIES[3], DELIVERIES[3]._replace(seq=4, message_id=3)],
    }
    assert set(snap.messages) == {2, 3, 2**40}
    assert snap.messages[3].payload == b"new"
    assert snap.retained == [RETAINED[1]._replace(payload=b"v2", expires_at=None)]
    assert snap.totals == {"clients_maximum": 13, "messages_received": 2**40}


@pytest_twisted.ensureDeferred
async def test_purge_removes_one_clients_rows_and_a_resave_survives(h):
    await h.commit(full_batch())
    fresh = SessionRecord("c1", 5, 10.0, "alice", None)
    new_sub = SubscriptionRecord("c1", "new/topic", 1)
    b = Batch(
        purged={"c1"},
        sessions={"c1": fresh},
        subscriptions={("c1", "new/topic"): new_sub},
        inbound={InboundKey("c1", 9): True},
    )
    await h.commit(b)
    snap = await h.reloaded()
    assert snap.sessions == {"c1": fresh, "c2": SESSIONS[1], "c3": SESSIONS[2]}
    assert snap.subscriptions == {"c1": [new_sub], "c2": [SUBS[2]]}
    assert snap.deliveries == {"c2": [DELIVERIES[3]]}
    assert snap.inbound == {"c1": {9}, "c2": {1}}
    assert set(snap.messages) == {2}  # the others lost their last delivery
    assert snap.retained == RETAINED  # not per client
    await h.commit(Batch(purged={"c1", "c2", "never-there"}))
    snap = await h.reloaded()
    assert (set(snap.sessions), snap.subscriptions, snap.deliveries, snap.inbound) == (
        {"c3"},
        {},
        {},
        {},
    )


@pytest_twisted.ensureDeferred
async def test_inbound_ids_are_added_and_removed(h):
    await h.commit(Batch(inbound={InboundKey("a", 1): True, InboundKey("a", 2): True}))
    await h.commit(Batch(inbound={InboundKey("a", 1): False, InboundKey("b", 1): True}))
    assert (await h.reloaded()).inbound == {"a": {2}, "b": {1}}
    await h.commit(Batch(inbound={InboundKey("a", 2): False, InboundKey("a", 2): True}))
    await h.commit(Batch(inbound={InboundKey("b", 1): False, InboundKey("b", 1): False}))
    assert (await h.reloaded()).inbound == {"a": {2}}


@pytest_twisted.ensureDeferred
async def test_totals_are_replaced(h):
    await h.commit(Batch(totals={"clients_maximum": 1, "other": 0}))
    await h.commit(Batch(totals={"clients_maximum": 2}))
    assert (await h.reloaded()).totals == {"clients_maximum": 2, "other": 0}


@pytest_twisted.ensureDeferred
async def test_orphan_messages_are_dropped_at_load(h):
    b = Batch(messages={m.message_id: m for m in MESSAGES})
    b.deliveries = {("c2", 1): DELIVERIES[3]}  # refers to message 2 only
    await h.commit(b)
    assert set((await h.reloaded()).messages) == {2}
    # dropped for good: a later delivery referring to message 1 finds nothing
    await h.commit(Batch(deliveries={("c2", 2): DELIVERIES[3]._replace(seq=2, message_id=1)}))
    snap = await h.reloaded()
    assert set(snap.messages) == {2}
    assert [d.seq for d in snap.deliveries["c2"]] == [1, 2]


@pytest_twisted.ensureDeferred
async def test_deliveries_come_back_in_seq_order(h):
    msg = MESSAGES[1]
    seqs = {"z": [10, 2, 7, 1_000_000, 3], "a": [5, 1]}
    deliveries = {
        (c, seq): DeliveryRecord(c, seq, msg.message_id, 2, False, (), None)
        for c, order in seqs.items()
        for seq in order
    }
    await h.commit(Batch(messages={msg.message_id: msg}, deliveries=deliveries))
    snap = await h.reloaded()
    assert {c: [d.seq for d in ds] for c, ds in snap.deliveries.items()} == {
        "z": [2, 3, 7, 10, 1_000_000],
        "a": [1, 5],
    }


@pytest_twisted.ensureDeferred
async def test_load_gives_fresh_containers(h):
    await h.commit(full_batch())
    first = h.store.load()
    first.sessions.clear()
    first.subscriptions["c1"].clear()
    first.deliveries["c1"].pop()
    first.inbound["c1"].add(1)
    first.retained.clear()
    first.totals["x"] = 1
    first.messages.clear()
    assert plain(h.store.load()) == plain(await h.reloaded())
    assert h.store.load().sessions == {s.client_id: s for s in SESSIONS}
    assert len(h.store.load().deliveries["c1"]) == 3


# -- SQLite only ---------------------------------------------------------------------------


async def make_store_file(path, **meta) -> None:
    s = SQLiteStore(path, reactor)
    for name, value in meta.items():
        s._conn.execute("UPDATE meta SET value = ? WHERE name = ?", (str(value), name))
    await s.close()


@pytest_twisted.ensureDeferred
async def test_new_database_records_schema_and_creation_time(tmp_path):
    await make_store_file(tmp_path / "s.sqlite")
    with sqlite3.connect(tmp_path / "s.sqlite") as conn:
        meta = dict(conn.execute("SELECT name, value FROM meta"))
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert meta["schema_version"] == str(SCHEMA_VERSION) and meta["created"]
    assert tables == set(sqlite_module.TABLES)


@pytest_twisted.ensureDeferred
async def test_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "s.sqlite"
    await make_store_file(path, schema_version=SCHEMA_VERSION + 1)
    before = path.read_bytes()
    for recover in ("fail", "move-aside"):  # a version problem is never moved aside
        with pytest.raises(StoreError) as caught:
            SQLiteStore(path, reactor, recover=recover)
        message = str(caught.value)
        assert str(path) in message and f"schema version {SCHEMA_VERSION + 1}" in message
        assert "\n" not in message
        assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]


def test_random_bytes_are_refused_and_left_untouched(tmp_path):
    path = tmp_path / "s.sqlite"
    path.write_bytes(os.urandom(8192))
    before = path.read_bytes()
    with pytest.raises(StoreError, match="not an SQLite database") as caught:
        SQLiteStore(path, reactor)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]


def test_someone_elses_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT)")
        conn.execute("INSERT INTO accounts VALUES (1, 'x')")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="something else") as caught:
        SQLiteStore(path, reactor)
    assert str(path) in str(caught.value) and "accounts" in str(caught.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_a_meta_table_without_our_schema_version_is_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (name TEXT, value TEXT)")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="no schema_version of ours"):
        SQLiteStore(path, reactor)
    assert path.read_bytes() == before


@pytest_twisted.ensureDeferred
async def test_damaged_database_is_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    s = SQLiteStore(path, reactor)
    big = [MessageRecord(i, "t", os.urandom(3000), 1, False, {}, None) for i in range(50)]
    deliveries = {("c", i): DeliveryRecord("c", i, i, 1, False, (), None) for i in range(50)}
    await s.commit(Batch(messages={m.message_id: m for m in big}, deliveries=deliveries))
    await s.close()
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page : 6 * page] = os.urandom(4 * page)  # b-tree pages, header intact
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="damaged"):
        SQLiteStore(path, reactor)
    assert path.read_bytes() == bytes(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]


@pytest.mark.parametrize("content", ["random", "foreign"])
@pytest_twisted.ensureDeferred
async def test_move_aside_renames_the_file_and_starts_empty(tmp_path, content):
    path = tmp_path / "s.sqlite"
    if content == "random":
        path.write_bytes(os.urandom(5000))
    else:
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE other (x)")
        conn.close()
    before = path.read_bytes()
    store = SQLiteStore(path, reactor, recover="move-aside")
    try:
        moved = store.moved_aside
        assert moved is not None and moved.parent == tmp_path
        assert moved.name.startswith("s.sqlite.corrupt-")
        stamp = moved.name.removeprefix("s.sqlite.corrupt-")
        assert len(stamp) == 15 and stamp[8] == "T" and stamp.replace("T", "").isdigit()
        assert moved.read_bytes() == before
        assert store.load() == Snapshot()
        await store.commit(Batch(totals={"clients_maximum": 3}))
    finally:
        await store.close()
    again = SQLiteStore(path, reactor, recover="move-aside")
    assert again.moved_aside is None
    assert again.load().totals == {"clients_maximum": 3}
    await again.close()


@pytest_twisted.ensureDeferred
async def test_a_good_store_is_not_moved_aside(tmp_path):
    await make_store_file(tmp_path / "s.sqlite")
    s = SQLiteStore(tmp_path / "s.sqlite", reactor, recover="move-aside")
    assert s.moved_aside is None
    await s.close()
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_unusable_paths_raise_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = {
        tmp_path / "file" / "s.sqlite": "is not a directory",
        tmp_path / "missing" / "s.sqlite": "does not exist",
        tmp_path: "is a directory",
    }
    for path, words in cases.items():
        with pytest.raises(StoreError) as caught:
            SQLiteStore(path, reactor)
        assert words in str(caught.value) and str(path) in str(caught.value)
        assert "\n" not in str(caught.value)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(("synchronous", "level"), [("full", 2), ("normal", 1)])
@pytest_twisted.ensureDeferred
async def test_pragmas(tmp_path, synchronous, level):
    s = SQLiteStore(tmp_path / "s.sqlite", reactor, synchronous=synchronous)
    try:
        conn = s._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == 32 * 1024 * 1024
        assert s.description == f"sqlite:{tmp_path / 's.sqlite'} (synchronous {synchronous})"
    finally:
        await s.close()


def test_bad_options_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(tmp_path / "s.sqlite", reactor, synchronous="off")
    with pytest.raises(ValueError, match="recover"):
        SQLiteStore(tmp_path / "s.sqlite", reactor, recover="delete")
    assert not (tmp_path / "s.sqlite").exists()


@pytest_twisted.ensureDeferred
async def test_failing_commit_fails_and_keeps_the_previous_state(store, tmp_path):
    await store.commit(full_batch())
    other = sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None)
    other.execute(
        "CREATE TRIGGER frozen BEFORE INSERT ON retained BEGIN SELECT RAISE(ABORT, 'frozen'); END"
    )
    b = Batch(purged={"c1"}, sessions={"c2": None}, totals={"clients_maximum": 99})
    b.retained = {"r/new": RETAINED[1]._replace(topic="r/new")}
    with pytest.raises(StoreError, match="commit failed: frozen") as caught:
        await store.commit(b)
    assert str(store.path) in str(caught.value)
    snap = store.load()
    assert set(snap.sessions) == {"c1", "c2", "c3"}
    assert snap.totals["clients_maximum"] == 12 and len(snap.deliveries["c1"]) == 3
    other.execute("DROP TRIGGER frozen")
    other.close()
    await store.commit(b)  # the same batch, retried
    snap = store.load()
    assert set(snap.sessions) == {"c3"} and snap.totals["clients_maximum"] == 99
    assert [r.topic for r in snap.retained] == ["r/1", "r/2", "r/new"]


@pytest_twisted.ensureDeferred
async def test_commit_on_a_closed_connection_fails(store):
    store._conn.close()
    with pytest.raises(StoreError, match="commit failed"):
        await store.commit(Batch(totals={"x": 1}))
    with pytest.raises(StoreError, match="checkpoint"):
        await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.commit(Batch(totals={"x": 1}))


@pytest_twisted.ensureDeferred
async def test_commits_run_off_the_reactor_thread(store):
    threads: list[tuple[int, str]] = []
    store._conn.set_trace_callback(
        lambda _: threads.append((threading.get_ident(), threading.current_thread().name))
    )
    await store.commit(full_batch())
    await store.commit(Batch(totals={"x": 1}))
    assert threads
    assert {ident for ident, _ in threads}.isdisjoint({threading.get_ident()})
    assert len({ident for ident, _ in threads}) == 1
    assert all("mqtt-store" in name for _, name in threads)


@pytest_twisted.ensureDeferred
async def test_close_truncates_the_wal(tmp_path):
    path = tmp_path / "s.sqlite"
    s = SQLiteStore(path, reactor)
    for i in range(5):
        await s.commit(Batch(totals={"n": i}, retained={"r": RETAINED[0]}))
    assert (tmp_path / "s.sqlite-wal").stat().st_size > 0
    await s.close()
    wal = tmp_path / "s.sqlite-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    assert s._pool.started is False
    await s.close()  # twice is fine


@pytest_twisted.ensureDeferred
async def test_a_crash_image_with_its_wal_loads_everything(store, tmp_path):
    await store.commit(full_batch())
    await store.commit(Batch(totals={"clients_maximum": 40}))
    image = tmp_path / "image"
    image.mkdir()
    for name in ("s.sqlite", "s.sqlite-wal"):  # as the disk was when the process died
        (image / name).write_bytes((tmp_path / name).read_bytes())
    assert (image / "s.sqlite-wal").stat().st_size > 0
    copy = SQLiteStore(image / "s.sqlite", reactor)
    try:
        snap = copy.load()
        assert snap.totals["clients_maximum"] == 40
        assert snap.sessions == {s.client_id: s for s in SESSIONS}
    finally:
        await copy.close()


@pytest_twisted.ensureDeferred
async def test_migrations_run_in_order(tmp_path, monkeypatch):
    path = tmp_path / "s.sqlite"
    await make_store_file(path)
    calls = []

    def to_2(conn):
        calls.append(2)
        conn.execute("ALTER TABLE sessions ADD COLUMN extra TEXT")

    def to_3(conn):
        calls.append(3)
        conn.execute("CREATE TABLE extra (x)")

    monkeypatch.setattr(sqlite_module, "SCHEMA_VERSION", 3)
    monkeypatch.setitem(sqlite_module.MIGRATIONS, 1, to_2)
    monkeypatch.setitem(sqlite_module.MIGRATIONS, 2, to_3)
    s = SQLiteStore(path, reactor)
    assert calls == [2, 3]
    assert s._conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone() == (
        "3",
    )
    assert s.load() == Snapshot()
    await s.close()
    SQLiteStore(path, reactor)._conn.close()
    assert calls == [2, 3]


@pytest_twisted.ensureDeferred
async def test_open_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_store("memory", reactor, "full", "fail") is None
    s = open_store("sqlite:sub.sqlite", reactor, "normal", "fail")
    assert isinstance(s, SQLiteStore)
    assert s.path == tmp_path / "sub.sqlite" and s.path.is_absolute()
    assert s.description == f"sqlite:{tmp_path / 'sub.sqlite'} (synchronous normal)"
    await s.close()
    for bad in ("sqlite:", "sqlite", "postgres://x", "Memory", ""):
        with pytest.raises(ValueError, match="memory"):
            open_store(bad, reactor, "full", "fail")


@pytest_twisted.ensureDeferred
async def test_a_store_in_use_is_refused_until_it_is_closed(tmp_path):
    """Two brokers on one file would interleave their writes: the second is refused in one
    line while the first holds it, and gets it once the first closed it."""
    path = tmp_path / "s.sqlite"
    first = SQLiteStore(path, reactor)
    await first.commit(Batch(totals={"n": 1}))
    before = path.read_bytes()
    with pytest.raises(StoreError, match="in use by another process") as refused:
        SQLiteStore(path, reactor)
    assert "\n" not in str(refused.value)
    assert path.read_bytes() == before
    await first.close()
    second = SQLiteStore(path, reactor)
    try:
        assert second.load().totals == {"n": 1}
    finally:
        await second.close()
