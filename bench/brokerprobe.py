"""Broker variants with a store and probes of a broker process, shared by persistence.py,
restart.py and soak.py: the variants (ours with --store memory, sqlite normal, sqlite full;
Mosquitto with persistence) and how to make one, its RSS, what it wrote to disk, the size
of its store, its stop, suspect lines in its log, and what an fsync costs in a directory.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

REFERENCE = "mosquitto-persist"
#: persistence broker variants in table order: (kind, store option / None for Mosquitto)
VARIANTS = {
    "ours-memory": ("ours", "memory"),
    "ours-sqlite-normal": ("ours", "normal"),
    "ours-sqlite-full": ("ours", "full"),
    REFERENCE: ("mosquitto", None),
}
#: unlimited queues (persist-qos1-offline and the restart fill). Not --max-queued-messages 0:
#: its "no limit" still drops for an offline session at 1,000 queued messages (the default
#: high-water mark of connected subscribers, mqtt_twisted/broker/config.py), so a limit no
#: run reaches stands for "none"
OURS_QUEUE_LIMIT = 100_000_000
OURS_NO_LIMITS = ("--max-queued-messages", str(OURS_QUEUE_LIMIT), "--max-queued-bytes", "0")
MOSQUITTO_NO_LIMITS = ("max_queued_messages 0",)


def brokers_for(names: list[str]) -> list[str]:
    """The persistence variants the run's --brokers select (ours: all three of ours)."""
    out = []
    if any(n.startswith("ours") for n in names):
        out += [n for n, (kind, _) in VARIANTS.items() if kind == "ours"]
    if "mosquitto" in names:
        out.append(REFERENCE)
    return out


# -- brokers and what they write ---------------------------------------------------------


_runs = 0


def store_dir_for(tmp: Path, name: str) -> Path:
    """A fresh directory for one broker process's store; Mosquitto (which drops root
    privileges to its own user) must be able to write in it."""
    global _runs
    _runs += 1
    path = tmp / f"store-{name}-{_runs}"
    path.mkdir()
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("mosquitto")
        except KeyError:
            pass
        else:
            os.chown(path, user.pw_uid, user.pw_gid)
            os.chmod(tmp, os.stat(tmp).st_mode | 0o111)
    return path


def make_broker(
    broker_class, name: str, tmp: Path, no_limits: bool = False, store_dir: Path | None = None
):
    """A (not yet started) broker of variant ``name`` with its store in ``store_dir`` (a
    fresh one by default): run.Broker with the scenario's options, default limits otherwise."""
    kind, store = VARIANTS[name]
    store_dir = store_dir or store_dir_for(tmp, name)
    if kind == "ours":
        if store == "memory":
            options: tuple[str, ...] = ("--store", "memory")
        else:
            options = ("--store", f"sqlite:{store_dir / 'store.sqlite'}", "--store-sync", store)
        broker = broker_class(
            name, kind, tmp, tuned=False, options=options + (OURS_NO_LIMITS if no_limits else ())
        )
    else:
        conf = ("persistence true", f"persistence_location {store_dir}/")
        broker = broker_class(
            name,
            kind,
            tmp,
            tuned=False,
            conf=conf + (MOSQUITTO_NO_LIMITS if no_limits else ()),
        )
    broker.store_dir = store_dir
    return broker


def rss_mib(pid: int) -> float:
    """The process's resident set size now, in MiB (NaN when it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def written_bytes(pid: int) -> int:
    """Bytes the process (all its threads) caused to be written to storage so far."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def files_size(directory: Path) -> dict[str, int]:
    """Size of each file in ``directory`` (SQLite's -shm index is left out: it is mapped)."""
    sizes = {}
    for path in directory.iterdir():
        if path.is_file() and not path.name.endswith("-shm"):
            sizes[path.name] = path.stat().st_size
    return sizes


def mib(n: float) -> float:
    return n / (1 << 20)


def stop_process(p: subprocess.Popen | None, timeout: float) -> tuple[float, int | None]:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds. Returns the
    seconds it took to exit after SIGTERM (NaN when killed, 0 when it was gone already)
    and its exit status."""
    if p is None or p.poll() is not None:
        return 0.0, None if p is None else p.returncode
    began = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
        return float("nan"), p.returncode
    return time.monotonic() - began, p.returncode


def stop_broker(broker, timeout: float = 60.0) -> tuple[float, int | None]:
    """SIGTERM, then wait up to ``timeout`` s (killed after): seconds taken, exit status."""
    return stop_process(broker.process, timeout)


#: lines of a broker's log that deserve a look (errors, tracebacks, warnings)
SUSPECT = re.compile(r"Traceback|Unhandled|Error|error|CRITICAL|Warning|warn|fail", re.I)
#: Mosquitto running as root says so at every start
EXPECTED = re.compile(r"should not be run as root")


def log_offset(broker) -> int:
    try:
        return broker.log_path.stat().st_size
    except OSError:
        return 0


def suspect_lines(broker, offset: int, limit: int = 3) -> list[str]:
    """Up to ``limit`` suspect lines the broker logged after ``offset`` (and how many)."""
    try:
        with open(broker.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    found = [
        line.strip()
        for line in text.splitlines()
        if SUSPECT.search(line) and not EXPECTED.search(line)
    ]
    shown = [line[:200] for line in found[:limit]]
    if len(found) > limit:
        shown.append(f"... {len(found) - limit} more")
    return shown


def filesystem_warning(directory: Path) -> str | None:
    """A warning when ``directory`` is on a file system where fsync costs nothing."""
    best, fstype = "", ""
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mount = parts[1]
            if str(directory).startswith(mount) and len(mount) > len(best):
                best, fstype = mount, parts[2]
    except OSError:
        return None
    if fstype in ("tmpfs", "ramfs"):
        return (
            f"warning: {directory} is on {fstype}: fsync is free there, the sqlite numbers "
            "say nothing about a disk (set TMPDIR to a directory on a disk)"
        )
    return None


def fsync_probe(directory: Path, count: int = 100) -> str:
    """What one 4 KiB write + fsync costs in ``directory`` (the floor of a synchronous
    commit): fast on a disk with a volatile or battery-backed cache, slow on a plain one."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"f" * 4096
        for i in range(count):
            began = time.perf_counter()
            os.pwrite(fd, block, (i % 16) * 4096)
            os.fsync(fd)
            times.append(1e3 * (time.perf_counter() - began))
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return (
        f"fsync of a 4 KiB write in {directory}: p50 {percentile(times, 0.5):.2f} ms, "
        f"p99 {percentile(times, 0.99):.2f} ms (the floor of a --store-sync full commit)"
    )


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(p * len(values)))]
