"""mqtt-twisted against Mosquitto and amqtt: throughput, latency, idle connections.

``make bench`` (``ARGS=--quick`` for a run under two minutes, ``ARGS=--profile`` to profile
our broker with py-spy under fan-in and fan-out). Loopback only. The brokers run pinned to
core 0 and the load generator (raw sockets, pre-encoded packets, one process per role,
see gen.py) to core 1. Scenarios are interleaved broker by broker (A B C A B C ...) over
several rounds; "ours-2" is a second, independent process of our broker, so the table shows
the run-to-run spread of one broker. The generator's ceiling is measured against a trivial
relay (sink.py) on the broker core. The overload scenarios (flood-qos0-fanin flooded and
paced, flood-qos1, slow-subscriber; see overload.py) run each on a fresh broker process with
its default limits and report accepted, delivered and lost messages side by side. The
persistence scenarios (``--only persist``, ``--only persist-restart``; see persistence.py
and restart.py) compare our broker with --store memory, sqlite normal and sqlite full
against Mosquitto with persistence; bench/soak.py is a separate long-running check of the
store file's size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import brokerprobe  # noqa: E402
import gen  # noqa: E402
import overload  # noqa: E402
import persistence  # noqa: E402
import restart  # noqa: E402
from brokerprobe import stop_process  # noqa: E402
from gen import FAILED, GO, STOP  # noqa: E402
from harness import Offset, Run, ctx, settle  # noqa: E402

BROKER_CORE, GEN_CORE = 0, 1
TWISTD = ROOT / ".venv" / "bin" / "twistd"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
AMQTT = HERE / ".venv-amqtt" / "bin" / "amqtt"
PYSPY = ROOT / ".venv" / "bin" / "py-spy"

PAYLOAD = b"p" * 64
#: --mosquitto-nodelay: Mosquitto with set_tcp_nodelay true (its default is Nagle on)
MOSQUITTO_NODELAY = False


def log(text: str) -> None:
    print(text, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def broker_preexec() -> None:
    raise_nofile()
    os.sched_setaffinity(0, {BROKER_CORE})
    os.setsid()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- brokers -------------------------------------------------------------------------


class Broker:
    """One broker process on a free port of 127.0.0.1.

    ``tuned``: with the throughput scenarios' settings (no limit on queued messages);
    otherwise with the broker's default limits (overload scenarios). ``options``: extra
    command-line options for our broker; without a ``--store`` among them it gets its own
    store file in ``tmp`` (the default store is sqlite:mqtt-twisted.sqlite in the working
    directory, which every process of ours would otherwise share). ``conf``: extra lines of
    Mosquitto's configuration file (one with ``persistence`` or ``max_queued_messages``
    replaces the default ``persistence false`` or the tuned limit). ``port``: a fixed port
    (a restart on the same port), otherwise a free one at each start.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        tmp: Path,
        tuned: bool = True,
        options: tuple[str, ...] = (),
        conf: tuple[str, ...] = (),
        port: int = 0,
    ) -> None:
        self.name, self.kind, self.tmp = name, kind, tmp
        self.tuned, self.options, self.conf = tuned, options, conf
        self.process: subprocess.Popen | None = None
        self.fixed_port = port
        self.port = port
        #: seconds start() waits for the listener; seconds the last start took to listen
        self.start_limit = 20.0
        self.listening_after = float("nan")

    @property
    def log_path(self) -> Path:
        return self.tmp / f"{self.name}.log"

    def command(self) -> list[str]:
        port = self.port
        if self.kind == "ours":
            return [
                str(TWISTD),
                "-n",
                "--pidfile=",
                "mqtt",
                "--mqtt",
                f"tcp:{port}:interface=127.0.0.1",
                "--http",
                "none",
                "--sys-interval",
                "0",
                *(["--max-queued-messages", "0"] if self.tuned else []),
                *(
                    []
                    if any(o.startswith("--store") for o in self.options)
                    else ["--store", f"sqlite:{self.name}-{port}.sqlite"]
                ),
                *self.options,
            ]
        if self.kind == "mosquitto":
            conf = self.tmp / f"{self.name}-{port}.conf"

            def given(option: str) -> bool:
                return any(line.split()[:1] == [option] for line in self.conf)

            conf.write_text(
                f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                + (
                    "max_queued_messages 100000000\n"
                    if self.tuned and not given("max_queued_messages")
                    else ""
                )
                + ("" if given("persistence") else "persistence false\n")
                + "log_dest stdout\nlog_type error\nlog_type warning\n"
                + ("set_tcp_nodelay true\n" if MOSQUITTO_NODELAY else "")
                + "".join(f"{line}\n" for line in self.conf)
            )
            return [MOSQUITTO, "-c", str(conf)]
        if self.kind == "amqtt":
            conf = self.tmp / f"{self.name}-{port}.yaml"
            conf.write_text(
                f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
                "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                "    allow_anonymous: true\n"
            )
            return [str(AMQTT), "-c", str(conf)]
        if self.kind == "sink":
            return [sys.executable, str(HERE / "sink.py"), str(port)]
        raise ValueError(self.kind)

    def start(self) -> None:
        self.port = self.fixed_port or free_port()
        logfile = open(self.log_path, "ab")  # noqa: SIM115
        env = dict(os.environ)
        if self.kind == "ours" and os.environ.get("BENCH_OURS_PYTHONPATH"):
            # experiments: a patched copy of mqtt_twisted first on the path
            env["PYTHONPATH"] = os.environ["BENCH_OURS_PYTHONPATH"]
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.tmp,
            stdout=logfile,
            env=env,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=broker_preexec,
        )
        logfile.close()
        began = time.monotonic()
        deadline = began + self.start_limit
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start (see {self.tmp}/{self.name}.log)")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                self.listening_after = time.monotonic() - began
                time.sleep(0.2)  # let it settle
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen within {self.start_limit:.0f} s")

    def stop(self) -> None:
        stop_process(self.process, 5)

    @property
    def pid(self) -> int:
        return self.process.pid


def throughput(
    port,
    cfg,
    publishers,
    subscribers_per_proc,
    nsubprocs,
    topic_filter,
    topics,
    fanout,
    window,
    batch,
):
    """QoS 0: delivered msgs/s over the measurement window, and messages lost after draining."""
    nsub = nsubprocs
    npub = len(topics)
    deadline = time.monotonic() + cfg.setup + cfg.warmup + cfg.duration + cfg.drain + 15
    run = Run(nsub + npub, deadline)
    delivered = ctx.RawArray("q", nsub)
    bad = ctx.RawArray("q", nsub)
    sent = ctx.RawArray("q", npub)
    size = len(gen.publish_packet(topics[0], PAYLOAD, 0))
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    try:
        for k in range(nsub):
            ids = [f"s{tag}-{k}-{j}" for j in range(subscribers_per_proc)]
            run.spawn(
                gen.subscriber,
                GEN_CORE,
                port,
                ids,
                topic_filter,
                0,
                size,
                k,
                delivered,
                run.state,
                bad,
                run.ctl,
                deadline,
            )
        run.wait_ready(range(nsub))
        for i, topic in enumerate(topics):
            run.spawn(
                gen.publisher,
                GEN_CORE,
                port,
                f"p{tag}-{i}",
                topic,
                PAYLOAD,
                i,
                sent,
                delivered,
                fanout,
                window,
                batch,
                Offset(run.state, nsub),
                run.ctl,
                deadline,
            )
        run.wait_ready(range(nsub, nsub + npub))
        run.ctl[GO] = 1
        time.sleep(cfg.warmup)
        t1, d1 = time.perf_counter(), sum(delivered)
        time.sleep(cfg.duration)
        t2, d2 = time.perf_counter(), sum(delivered)
        run.ctl[STOP] = 1
        time.sleep(0.05)
        settle(lambda: sum(delivered), lambda: sum(sent) * fanout, cfg.drain)
        expected = sum(sent) * fanout
        got = sum(delivered)
        return {
            "value": (d2 - d1) / (t2 - t1),
            "sent": expected,
            "delivered": got,
            "lost": expected - got,
            "errors": sum(bad),
        }
    finally:
        run.finish()


def fan_in(port, cfg):
    topics = [f"bench/in/{i}" for i in range(8)]
    return throughput(port, cfg, None, 1, 1, "bench/in/#", topics, 1, 20_000, 100)


def fan_out(port, cfg):
    return throughput(port, cfg, None, 25, 4, "bench/out", ["bench/out"], 100, 100_000, 20)


def qos1(port, cfg):
    deadline = time.monotonic() + cfg.setup + cfg.warmup + cfg.duration + cfg.drain + 15
    run = Run(2, deadline)
    delivered = ctx.RawArray("q", 1)
    bad = ctx.RawArray("q", 1)
    sent = ctx.RawArray("q", 1)
    acked = ctx.RawArray("q", 1)
    topic = "bench/q1"
    size = len(gen.publish_packet(topic, PAYLOAD, 1, 1))
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    try:
        run.spawn(
            gen.subscriber,
            GEN_CORE,
            port,
            [f"s{tag}"],
            topic,
            1,
            size,
            0,
            delivered,
            run.state,
            bad,
            run.ctl,
            deadline,
        )
        run.wait_ready([0])
        run.spawn(
            gen.qos1_publisher,
            GEN_CORE,
            port,
            f"p{tag}",
            topic,
            PAYLOAD,
            64,
            0,
            sent,
            acked,
            Offset(run.state, 1),
            run.ctl,
            deadline,
        )
        run.wait_ready([1])
        run.ctl[GO] = 1
        time.sleep(cfg.warmup)
        t1, d1 = time.perf_counter(), delivered[0]
        time.sleep(cfg.duration)
        t2, d2 = time.perf_counter(), delivered[0]
        run.ctl[STOP] = 1
        settle(lambda: min(acked[0], delivered[0]), lambda: sent[0], cfg.drain)
        return {
            "value": (d2 - d1) / (t2 - t1),
            "sent": sent[0],
            "acked": acked[0],
            "delivered": delivered[0],
            "lost": sent[0] - delivered[0],
            "errors": bad[0],
        }
    finally:
        run.finish()


def latency(port, cfg):
    rate = 2000
    count = int(rate * cfg.latency_seconds)
    deadline = time.monotonic() + cfg.setup + cfg.latency_seconds + cfg.drain + 15
    run = Run(2, deadline)
    samples = ctx.RawArray("d", count)
    nsamples = ctx.RawArray("q", 1)
    sent = ctx.RawArray("q", 1)
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    try:
        run.spawn(
            gen.latency_subscriber,
            GEN_CORE,
            port,
            f"s{tag}",
            "bench/lat",
            0,
            run.state,
            samples,
            nsamples,
            run.ctl,
            deadline,
        )
        run.wait_ready([0])
        run.spawn(
            gen.latency_publisher,
            GEN_CORE,
            port,
            f"p{tag}",
            "bench/lat",
            rate,
            count,
            0,
            sent,
            Offset(run.state, 1),
            run.ctl,
            deadline,
        )
        run.wait_ready([1])
        run.ctl[GO] = 1
        end = time.monotonic() + cfg.latency_seconds + 5
        while sent[0] < count and time.monotonic() < end:
            time.sleep(0.02)
        settle(lambda: nsamples[0], lambda: sent[0], 3)
        n = nsamples[0]
        values = sorted(samples[:n])
        if not values:
            return {"value": float("nan"), "lost": sent[0], "sent": sent[0], "delivered": 0}

        def pct(p):
            return values[min(n - 1, int(p * n))]

        return {
            "value": pct(0.99),
            "p50": pct(0.5),
            "max": values[-1],
            "sent": sent[0],
            "delivered": n,
            "lost": sent[0] - n,
        }
    finally:
        run.finish()


def idle(broker: Broker, cfg):
    """A fresh broker process; RSS growth per idle subscribed connection, and connect time."""
    broker.start()
    try:
        n = cfg.idle_connections
        nprocs = 4
        per = n // nprocs
        time.sleep(0.3)
        before = rss_kib(broker.pid)
        deadline = time.monotonic() + 30 + 20
        run = Run(nprocs, deadline)
        opened = ctx.RawArray("q", nprocs)
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        try:
            start = time.perf_counter()
            for k in range(nprocs):
                run.spawn(
                    gen.idle_clients,
                    GEN_CORE,
                    broker.port,
                    f"i{tag}-",
                    k * per,
                    per,
                    f"127.0.0.{2 + k}",
                    k,
                    opened,
                    run.state,
                    run.ctl,
                    deadline,
                )
            limit = time.monotonic() + (30 if broker.kind == "ours" else cfg.idle_other_limit)
            while sum(opened) < per * nprocs and time.monotonic() < limit:
                if FAILED in list(run.state):
                    break
                time.sleep(0.01)
            took = time.perf_counter() - start
            count = sum(opened)
            time.sleep(1.0)
            after = rss_kib(broker.pid)
        finally:
            run.finish()
        return {
            "value": (after - before) / max(count, 1),
            "connect_s": took,
            "opened": count,
            "lost": per * nprocs - count,
            "rss_before_mib": before / 1024,
            "rss_after_mib": after / 1024,
        }
    finally:
        broker.stop()


# -- profile -------------------------------------------------------------------------


def profile(cfg, tmp: Path, out_dir: Path) -> None:
    if not PYSPY.exists():
        log("profile: py-spy not installed (make bench-deps), skipped")
        return
    for name, scenario in (("fan-in", fan_in), ("fan-out", fan_out), ("qos1", qos1)):
        broker = Broker("ours-profiled", "ours", tmp)
        broker.start()
        try:
            out = out_dir / f"profile-{name}.speedscope.json"
            seconds = cfg.warmup + cfg.duration
            spy = subprocess.Popen(
                [
                    str(PYSPY),
                    "record",
                    "--pid",
                    str(broker.pid),
                    "--format",
                    "speedscope",
                    "--function",
                    "--rate",
                    "250",
                    "--duration",
                    str(int(seconds + 1)),
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.5)
            result = scenario(broker.port, cfg)
            spy.wait(30)
            log(
                f"\nprofile of ours under {name} ({result['value']:,.0f} msg/s while "
                f"sampled): {out.relative_to(ROOT)}"
            )
            log(top_functions(out))
        finally:
            broker.stop()


def top_functions(path: Path, limit: int = 10) -> str:
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    self_w: dict[int, float] = {}
    incl_w: dict[int, float] = {}
    total = 0.0
    for prof in data["profiles"]:
        for stack, weight in zip(prof["samples"], prof["weights"]):
            total += weight
            if stack:
                self_w[stack[-1]] = self_w.get(stack[-1], 0) + weight
            for f in set(stack):
                incl_w[f] = incl_w.get(f, 0) + weight
    total = total or 1
    lines = [f"{'self %':>7} {'total %':>8}  function"]
    for f, w in sorted(self_w.items(), key=lambda kv: -kv[1])[:limit]:
        fr = frames[f]
        where = f"{Path(fr.get('file', '?')).name}:{fr.get('line', '?')}"
        lines.append(
            f"{100 * w / total:>7.1f} {100 * incl_w[f] / total:>8.1f}  {fr['name']} ({where})"
        )
    return "\n".join(lines)


# -- report --------------------------------------------------------------------------

#: --only name of the restart-time measurement (restart.py)
RESTART = "persist-restart"

SCENARIOS = {
    "fan-in": ("QoS 0 fan-in 8 pub -> 1 sub '#', msgs/s delivered", fan_in, True),
    "fan-out": ("QoS 0 fan-out 1 pub -> 100 subs, msgs/s delivered", fan_out, True),
    "qos1": ("QoS 1 1 pub (window 64) -> 1 acking sub, msgs/s", qos1, True),
    "latency": ("latency p99 at 2,000 msg/s, ms", latency, False),
    "idle": ("10,000 idle subscribed connections, RSS KiB/conn", None, False),
}


def fmt(v: float) -> str:
    if v != v:
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


def table(results: dict, names: list[str]) -> str:
    out = []
    for key, (title, _fn, _higher) in SCENARIOS.items():
        per = results.get(key)
        if not per:
            continue
        out.append(f"\n{title}")
        out.append(
            f"  {'broker':<10} {'median':>10} {'min':>10} {'max':>10} {'runs':>4} "
            f"{'lost':>6}  extra"
        )
        for name in names:
            runs = per.get(name)
            if not runs:
                continue
            vals = [r["value"] for r in runs]
            extra = ""
            if key == "latency":
                extra = (
                    f"p50 {statistics.median(r.get('p50', float('nan')) for r in runs):.2f} "
                    f"max {max(r.get('max', float('nan')) for r in runs):.2f} ms"
                )
            elif key == "idle":
                extra = (
                    f"connect {statistics.median(r['connect_s'] for r in runs):.1f} s, "
                    f"opened {min(r['opened'] for r in runs)}, RSS "
                    f"{runs[-1]['rss_before_mib']:.0f} -> {runs[-1]['rss_after_mib']:.0f} MiB"
                )
            errors = sum(r.get("errors", 0) for r in runs)
            if errors:
                extra += f" framing/connection errors {errors}"
            out.append(
                f"  {name:<10} {fmt(statistics.median(vals)):>10} {fmt(min(vals)):>10} "
                f"{fmt(max(vals)):>10} {len(vals):>4} "
                f"{sum(r.get('lost', 0) for r in runs):>6}  {extra}"
            )
        ours = per.get("ours")
        if ours:
            mine = statistics.median(r["value"] for r in ours)
            ratios = []
            for name in names:
                if name != "ours" and per.get(name):
                    other = statistics.median(r["value"] for r in per[name])
                    ratios.append(
                        f"ours/{name} {mine / other:.2f}" if other else f"ours/{name} n/a"
                    )
            if ratios:
                out.append("  ratio (medians): " + ", ".join(ratios))
    return "\n".join(out)


def targets(results: dict) -> str:
    def med(key, name):
        runs = results.get(key, {}).get(name)
        return statistics.median(r["value"] for r in runs) if runs else None

    lines = ["\nTargets"]

    def check(label, ok, detail):
        state = "n/a " if ok is None else ("MET " if ok else "MISS")
        lines.append(f"  [{state}] {label}: {detail}")

    for key, label, bound in (
        ("fan-in", "fan-in >= 0.5 x Mosquitto", 0.5),
        ("fan-out", "fan-out >= 0.5 x Mosquitto", 0.5),
        ("qos1", "QoS 1 >= 0.4 x Mosquitto", 0.4),
    ):
        a, b = med(key, "ours"), med(key, "mosquitto")
        check(
            label,
            None if a is None or b is None else a / b >= bound,
            "skipped" if a is None or b is None else f"{a / b:.2f}",
        )
    a, b = med("latency", "ours"), med("latency", "mosquitto")
    check(
        "latency p99 <= 2 x Mosquitto",
        None if a is None or b is None else a <= 2 * b,
        "skipped" if a is None or b is None else f"{a:.2f} ms vs {b:.2f} ms ({a / b:.2f} x)",
    )
    runs = results.get("idle", {}).get("ours")
    if runs:
        kib = statistics.median(r["value"] for r in runs)
        secs = max(r["connect_s"] for r in runs)
        opened = min(r["opened"] for r in runs)
        check(
            "idle <= 15 KiB/conn, all connect within 30 s",
            kib <= 15 and secs <= 30 and not sum(r["lost"] for r in runs),
            f"{kib:.1f} KiB/conn, {opened} opened in {secs:.1f} s",
        )
    else:
        check("idle <= 15 KiB/conn", None, "skipped")
    q = results.get("qos1", {})
    qlost = sum(r.get("lost", 0) for n in ("ours", "ours-2") for r in q.get(n, []))
    others = ", ".join(
        f"{n} {sum(r.get('lost', 0) for r in runs)}"
        for n, runs in q.items()
        if not n.startswith("ours")
    )
    check(
        "QoS 1 messages lost == 0 (ours; lost = not delivered by the end of the drain time)",
        qlost == 0 if q.get("ours") else None,
        f"ours {qlost}" + (f"; others: {others}" if others else ""),
    )
    for key in ("fan-in", "fan-out", "qos1"):
        a, b = med(key, "ours"), med(key, "amqtt")
        check(
            f"{key} >= 5 x amqtt",
            None if a is None or b is None else a / b >= 5,
            "skipped" if a is None or b is None else f"{a / b:.1f} x",
        )
    a, b = med("idle", "ours"), med("idle", "amqtt")
    if a is not None and b is not None:
        lines.append(f"  [info] idle RSS/conn: ours {a:.1f} KiB, amqtt {b:.1f} KiB")
    return "\n".join(lines)


def ours_supports(option: str) -> bool:
    """Whether ``twistd -n mqtt --help`` lists the option (False if it cannot run)."""
    try:
        done = subprocess.run(
            [str(TWISTD), "-n", "mqtt", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return option in done.stdout


def overload_options(keys: list[str]) -> dict[str, tuple[str, ...]]:
    """Per overload scenario, the extra options our broker runs with (those it supports)."""
    options = {}
    for key in keys:
        wanted = overload.SCENARIOS[key].ours_options
        if wanted and ours_supports(wanted[0]):
            options[key] = wanted
            log(f"{key}: ours runs with {' '.join(wanted)}")
        elif wanted:
            options[key] = ()
            log(f"{key}: ours has no {wanted[0]} (twistd -n mqtt --help); defaults used")
        else:
            options[key] = ()
    return options


def run_overload(keys: list[str], names: list[str], kinds: dict, tmp: Path, cfg) -> dict:
    """Every overload scenario, each run on a fresh broker with default limits, interleaved
    broker by broker over ``cfg.overload_rounds`` rounds."""
    options = overload_options(keys)
    results: dict = {}
    for rnd in range(cfg.overload_rounds):
        order = names if rnd % 2 == 0 else names[::-1]
        for key in keys:
            for name in order:
                extra = options[key] if kinds[name] == "ours" else ()
                broker = Broker(name, kinds[name], tmp, tuned=False, options=extra)
                try:
                    broker.start()
                    r = overload.SCENARIOS[key].run(broker, cfg)
                except Exception as error:  # noqa: BLE001
                    log(f"round {rnd + 1} {key} {name}: FAILED {error}")
                    continue
                finally:
                    broker.stop()
                results.setdefault(key, {}).setdefault(name, []).append(r)
                log(f"round {rnd + 1} {key:<22} {name:<10} {overload.summary(r)}")
    return results


class Config:
    def __init__(self, quick: bool, rounds: int | None) -> None:
        self.quick = quick
        self.rounds = rounds or (2 if quick else 5)
        self.setup = 30.0
        self.warmup = 0.3 if quick else 0.5
        self.duration = 1.0 if quick else 3.0
        self.drain = 2.5 if quick else 10.0
        self.latency_seconds = 2.0 if quick else 5.0
        self.idle_connections = 10_000
        self.idle_rounds = 1 if quick else 2
        #: connect-time cap for the other brokers (amqtt needs far longer than 30 s)
        self.idle_other_limit = 10.0 if quick else 30.0
        #: overload scenarios (overload.py): a fresh broker per run, so fewer rounds
        self.overload_rounds = rounds or (2 if quick else 3)
        self.overload_warmup = 0.5 if quick else 1.0
        self.overload_seconds = 2.0 if quick else 5.0
        self.overload_drain = 5.0 if quick else 10.0
        #: flooded QoS 0: the kernel buffers' backlog takes a while (ends after 1 s idle)
        self.flood_drain = 20.0 if quick else 60.0
        self.slow_seconds = 6.0 if quick else 10.0
        #: persistence scenarios (persistence.py): a fresh broker and store per run
        self.persist_rounds = rounds or (1 if quick else 3)
        self.gen_core = GEN_CORE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (< 2 min)")
    parser.add_argument("--rounds", type=int, help="rounds of every scenario (default 2 / 5)")
    parser.add_argument(
        "--only",
        help="comma-separated scenarios: "
        + ",".join([*SCENARIOS, *overload.GROUPS, *persistence.GROUPS, RESTART]),
    )
    parser.add_argument("--brokers", help="comma-separated: ours,ours-2,mosquitto,amqtt")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only profile our broker with py-spy under fan-in and fan-out",
    )
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--no-matching", action="store_true")
    parser.add_argument(
        "--mosquitto-nodelay",
        action="store_true",
        help="run Mosquitto with set_tcp_nodelay true (default: Debian's default)",
    )
    args = parser.parse_args()
    globals()["MOSQUITTO_NODELAY"] = args.mosquitto_nodelay
    cfg = Config(args.quick, args.rounds)
    began = time.monotonic()
    raise_nofile()
    if len(os.sched_getaffinity(0)) < 2 or (os.cpu_count() or 1) < 2:
        log("warning: fewer than 2 cores; broker and generator will share a core")
        globals()["GEN_CORE"] = BROKER_CORE
        cfg.gen_core = BROKER_CORE
    os.sched_setaffinity(0, {GEN_CORE})
    load = os.getloadavg()[0]
    if load > 0.5:
        log(
            f"warning: load average {load:.2f} before the run: other work on this machine "
            "makes the numbers noisy"
        )
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    only = args.only.split(",") if args.only else [*SCENARIOS, *overload.GROUPS, "persist", RESTART]
    overload_keys = overload.selected(only)
    persist_keys = persistence.selected(only)
    with tempfile.TemporaryDirectory(prefix="mqtt-bench-") as tmpname:
        tmp = Path(tmpname)
        if args.profile:
            profile(cfg, tmp, out_dir)
            log(f"(total {time.monotonic() - began:.0f} s)")
            return
        available = {
            "ours": TWISTD.exists(),
            "ours-2": TWISTD.exists(),
            "mosquitto": Path(MOSQUITTO).exists(),
            "amqtt": AMQTT.exists(),
        }
        wanted = args.brokers.split(",") if args.brokers else list(available)
        names = [n for n in wanted if available.get(n)]
        for n in wanted:
            if not available.get(n):
                log(f"skipped {n}: not installed (make bench-deps)")
        kinds = {"ours": "ours", "ours-2": "ours", "mosquitto": "mosquitto", "amqtt": "amqtt"}
        log(
            f"brokers: {', '.join(names)}; rounds: {cfg.rounds}; broker core {BROKER_CORE}, "
            f"generator core {GEN_CORE}; {'quick' if cfg.quick else 'full'} run"
        )
        results: dict = {}
        ceiling: dict = {}
        wants_ceiling = any(k in only for k in ("fan-in", "fan-out", "qos1", "latency")) or any(
            overload.SCENARIOS[k].ceiling for k in overload_keys
        )
        if not args.no_ceiling and wants_ceiling:
            sink = Broker("sink", "sink", tmp)
            sink.start()
            try:
                for key in ("fan-in", "fan-out", "qos1", "latency"):
                    if key in only:
                        ceiling[key] = SCENARIOS[key][1](sink.port, cfg)
                for key in overload_keys:
                    if overload.SCENARIOS[key].ceiling:
                        r = overload.SCENARIOS[key].run(sink, cfg)
                        ceiling[key] = {"value": r.metrics[overload.DELIVERED]}
                log(
                    "generator ceiling (trivial relay sink.py on the broker core): "
                    + ", ".join(
                        f"{k} {fmt(v['value'])}{' ms' if k == 'latency' else '/s'}"
                        for k, v in ceiling.items()
                    )
                )
            finally:
                sink.stop()
        running = {}
        try:
            throughput_keys = [k for k in ("fan-in", "fan-out", "qos1", "latency") if k in only]
            if throughput_keys:
                for name in names:
                    running[name] = Broker(name, kinds[name], tmp)
                    running[name].start()
            for rnd in range(cfg.rounds):
                order = names if rnd % 2 == 0 else names[::-1]
                for key in throughput_keys:
                    for name in order:
                        broker = running[name]
                        if broker.process.poll() is not None:
                            log(f"{name} died; see {tmp}/{name}.log")
                            continue
                        try:
                            r = SCENARIOS[key][1](broker.port, cfg)
                        except Exception as error:  # noqa: BLE001
                            log(f"round {rnd + 1} {key} {name}: FAILED {error}")
                            continue
                        results.setdefault(key, {}).setdefault(name, []).append(r)
                        log(
                            f"round {rnd + 1} {key:<8} {name:<10} {fmt(r['value']):>10} "
                            f"lost {r.get('lost', 0)}"
                        )
        finally:
            for broker in running.values():
                broker.stop()
        overload_results = run_overload(overload_keys, names, kinds, tmp, cfg)
        persist_names = brokerprobe.brokers_for(names)
        persist_results = persistence.run_scenarios(
            persist_keys, persist_names, Broker, tmp, cfg, log
        )
        restart_results = (
            restart.run_restart(persist_names, Broker, tmp, cfg, log) if RESTART in only else {}
        )
        if "idle" in only:
            idle_names = [n for n in names if n != "ours-2"]
            for rnd in range(cfg.idle_rounds):
                for name in idle_names:
                    try:
                        r = idle(Broker(f"{name}-idle", kinds[name], tmp), cfg)
                    except Exception as error:  # noqa: BLE001
                        log(f"idle {name}: FAILED {error}")
                        continue
                    results.setdefault("idle", {}).setdefault(name, []).append(r)
                    log(
                        f"round {rnd + 1} idle     {name:<10} {r['value']:.1f} KiB/conn, "
                        f"{r['opened']} in {r['connect_s']:.1f} s"
                    )
        log("\n=== Results (" + ("quick" if cfg.quick else "full") + " run) ===")
        if not args.no_ceiling and ceiling:
            log(
                "generator ceiling (trivial relay): "
                + ", ".join(
                    f"{k} {fmt(v['value'])}{' ms p99' if k == 'latency' else ' msg/s'}"
                    for k, v in ceiling.items()
                )
            )
        log(table(results, names))
        log(overload.table(overload_results, names))
        if persist_results:
            log(persistence.table(persist_results, persist_names))
        if restart_results:
            log(restart.restart_table(restart_results))
        log(targets(results))
        if "ours" in names and "ours-2" in names:
            spread = []
            for key in throughput_keys:
                a = results.get(key, {}).get("ours")
                b = results.get(key, {}).get("ours-2")
                if a and b:
                    ma = statistics.median(r["value"] for r in a)
                    mb = statistics.median(r["value"] for r in b)
                    spread.append(f"{key} {100 * abs(ma - mb) / max(ma, mb):.0f}%")
            log(
                "\nspread between two processes of ours (|ours - ours-2| / max): "
                + ", ".join(spread)
            )
        results["overload"] = {
            key: {name: [asdict(r) for r in runs] for name, runs in per.items()}
            for key, per in overload_results.items()
        }
        results["persist"] = {
            key: {name: [asdict(r) for r in runs] for name, runs in per.items()}
            for key, per in persist_results.items()
        }
        results[RESTART] = restart_results
        (out_dir / "last.json").write_text(json.dumps(results, indent=1))
    if not args.no_matching:
        import matching

        log("")
        log(matching.report(cfg.quick))
    log(f"\n(total {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
