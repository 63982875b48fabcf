"""Workers on several hosts: each Celery worker in a network namespace of its own, over a veth.

Shared by tests/integration/test_several_hosts.py (short, CI) and `python -m bench.hosts` (long).
A "host" is a network namespace made here (`ip netns add`, a random suffix in its name) joined to
the root namespace by a veth pair on a private /30 of its own. PostgreSQL and RabbitMQ listen on
127.0.0.1 only (and RabbitMQ's guest is loopback-only), so a forwarder (tests/tcp_forward.py) in
the root namespace listens on each host-side veth address and carries the connections to them.
The Market sandbox is reached the same way; inside each namespace a second forwarder offers it on
the namespace's own loopback, because the service takes plain `http://` only for a loopback
address (a real deployment has `https://` there). The namespaces have no default route: a worker
reaches only the addresses the rig made. Nothing is shared between the hosts but those three
services: no file (each worker has its own log and beat schedule), no socket, no clock.

Cleanup is always complete, on failure too: every process left in a namespace (`ip netns pids`)
is killed, the namespaces and veths deleted. Needs root and `ip netns`; without them it fails.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, make_url

from domain.changes import Change
from sandbox.server import MarketSandbox
from tests.integration.drain_support import pending_keys
from tests.services import ROOT, WorkerProcess, faketime_env, service_env, wait_for
from worker.ingest import store_message

API_KEY = "sk-hosts-rig-never-in-logs"
# The private block the /30s are cut from: 10.231.X.0/24, X picked at random among the free ones.
_BLOCK = "10.231"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _free_block() -> int:
    """A third octet X whose 10.231.X.0/24 no interface or route of this machine uses."""
    used = _ip("-4", "-o", "addr").stdout + _ip("-4", "route").stdout
    choices = [x for x in range(1, 255) if f"{_BLOCK}.{x}." not in used]
    if not choices:
        raise RuntimeError(f"no free {_BLOCK}.X.0/24 block for the rig's veths")
    return random.choice(choices)


NAMESPACE_PREFIX = "stocksync-"
# Every namespace this process made (a test's teardown removes its own, never another run's).
MADE: set[str] = set()


def namespaces() -> set[str]:
    """The rig's network namespaces on this machine now."""
    listing = _ip("netns", "list", check=False).stdout.split("\n")
    return {line.split()[0] for line in listing if line.startswith(NAMESPACE_PREFIX)}


def remove_namespace(name: str) -> None:
    """Kills every process in namespace `name` (`ip netns pids`), then deletes it (and with it
    its end of the veth)."""
    for _ in range(5):
        pids = _ip("netns", "pids", name, check=False).stdout.split()
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.2)
    _ip("netns", "del", name, check=False)


@dataclass
class Host:
    """One namespace: its name, its veth's root-side name and both ends' addresses."""

    name: str
    veth: str
    outer: str  # root-namespace end: what the worker dials for every service
    inner: str  # the namespace's end
    workers: list[WorkerProcess] = field(default_factory=list)

    def exec_prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)


def _via(url: str, host: str) -> str:
    """`url` (PostgreSQL SQLAlchemy or AMQP) with its host replaced by `host`, port kept."""
    if url.startswith("postgresql"):
        return make_url(url).set(host=host).render_as_string(hide_password=False)
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    port = hostport.rpartition(":")[2] if ":" in hostport else ""
    netloc = f"{userinfo}@{host}" if userinfo else host
    return urlunsplit(parts._replace(netloc=f"{netloc}:{port}" if port else netloc))


def _port_of(url: str, default: int) -> int:
    if url.startswith("postgresql"):
        return make_url(url).port or default
    return urlsplit(url).port or default


def _start_forwarder(
    routes: list[str], log: Path, prefix: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """tests/tcp_forward.py with `routes` (`LISTEN=TARGET`), returned once it says `ready`."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "tests.tcp_forward", *routes],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    assert proc.stdout is not None
    with proc.stdout:  # the forwarder prints `ready` once bound, or exits
        line = proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"forwarder {routes} did not start: {log.read_text()[-2000:]}")
    return proc


def _reachable_from(host: Host, address: str, port: int) -> bool:
    code = (
        "import socket,sys\n"
        "s=socket.socket(); s.settimeout(1)\n"
        f"sys.exit(0 if s.connect_ex(({address!r}, {port})) == 0 else 1)"
    )
    return (
        subprocess.run(
            [*host.exec_prefix(), sys.executable, "-c", code],
            check=False,
            capture_output=True,
            timeout=30,
        ).returncode
        == 0
    )


class HostsRig:
    """`count` hosts (namespaces), the forwarders, and workers started in them; a context manager
    that removes all of it on the way out."""

    def __init__(
        self, count: int, log_dir: Path, database_url: str, broker_url: str, market_port: int
    ) -> None:
        self.log_dir = log_dir
        self.database_url = database_url
        self.broker_url = broker_url
        self.market_port = market_port
        self.ports = [
            _port_of(database_url, 5432),
            _port_of(broker_url, 5672),
            market_port,
        ]
        suffix = uuid.uuid4().hex[:6]
        block = _free_block()
        self.hosts = [
            Host(
                name=f"{NAMESPACE_PREFIX}{suffix}-h{i}",
                veth=f"vss{suffix}{i}",  # at most 15 characters, as the kernel requires
                outer=f"{_BLOCK}.{block}.{4 * i + 1}",
                inner=f"{_BLOCK}.{block}.{4 * i + 2}",
            )
            for i in range(count)
        ]
        self._forwarders: list[subprocess.Popen[bytes]] = []

    # --- namespaces -------------------------------------------------------------------------

    def _make(self, host: Host) -> None:
        MADE.add(host.name)
        added = _ip("netns", "add", host.name, check=False)
        if added.returncode != 0:
            raise RuntimeError(
                f"`ip netns add` failed (root and iproute2 are required): {added.stderr.strip()}"
            )
        peer = f"{host.veth}n"
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", host.name)
        _ip("addr", "add", f"{host.outer}/30", "dev", host.veth)
        _ip("link", "set", host.veth, "up")
        inside = ("netns", "exec", host.name, "ip")
        _ip(*inside, "addr", "add", f"{host.inner}/30", "dev", peer)
        _ip(*inside, "link", "set", peer, "up")
        _ip(*inside, "link", "set", "lo", "up")

    def _remove(self, host: Host) -> None:
        for worker in host.workers:
            if worker.process is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGKILL)
        remove_namespace(host.name)
        for worker in host.workers:
            if worker.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(10)
        _ip("link", "del", host.veth, check=False)  # gone with the namespace, unless half-made

    def __enter__(self) -> HostsRig:
        try:
            self._setup()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _setup(self) -> None:
        for host in self.hosts:
            self._make(host)
        # Root namespace: each host-side address forwards to the services on 127.0.0.1.
        self._forwarders.append(
            _start_forwarder(
                [
                    f"{host.outer}:{port}=127.0.0.1:{port}"
                    for host in self.hosts
                    for port in self.ports
                ],
                self.log_dir / "forward-root.log",
            )
        )
        for host in self.hosts:
            # Inside: the Market on the namespace's loopback, carried over the veth.
            self._forwarders.append(
                _start_forwarder(
                    [f"127.0.0.1:{self.market_port}={host.outer}:{self.market_port}"],
                    self.log_dir / f"forward-{host.name}.log",
                    host.exec_prefix(),
                )
            )
            # The namespace is a host of its own: the root namespace's loopback is out of reach.
            if _reachable_from(host, "127.0.0.1", self.ports[0]):
                raise RuntimeError(f"{host.name} reaches 127.0.0.1:{self.ports[0]} of the root")
            if not _reachable_from(host, host.outer, self.ports[0]):
                raise RuntimeError(f"{host.name} cannot reach PostgreSQL at {host.outer}")

    def __exit__(self, *_: object) -> None:
        errors = []
        for host in self.hosts:
            for worker in host.workers:
                try:
                    worker.stop()
                except Exception as exc:  # the namespace is removed whatever happened
                    errors.append(exc)
        for host in self.hosts:
            self._remove(host)
        for proc in self._forwarders:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        left = sorted({h.name for h in self.hosts} & namespaces())
        if left:
            raise RuntimeError(f"namespaces left behind: {left}")
        if errors:
            raise errors[0]

    # --- workers ----------------------------------------------------------------------------

    def start_workers(self, specs: list[dict[str, Any]], **settings: str) -> list[WorkerProcess]:
        """One worker per spec (`host`: index, `beat`: bool, `clock`: a libfaketime offset or
        None), all started at once; `settings` are STOCKSYNC_* by suffix, for every worker."""
        workers = []
        for number, spec in enumerate(specs):
            host = self.hosts[spec["host"]]
            env = service_env(
                _via(self.database_url, host.outer),
                _via(self.broker_url, host.outer),
                STOCKSYNC_MARKET_BASE_URL=f"http://127.0.0.1:{self.market_port}",
                STOCKSYNC_MARKET_API_KEY=API_KEY,
                **{f"STOCKSYNC_{k.upper()}": v for k, v in settings.items()},
            )
            if spec.get("clock"):
                env.update(faketime_env(spec["clock"]))
            log = self.log_dir / f"worker-{number}-{host.name}.log"
            worker = WorkerProcess(
                env,
                log,
                extra_args=("-c", "2"),
                beat_schedule=log.with_suffix(".beat") if spec.get("beat") else None,
                command_prefix=host.exec_prefix(),
            )
            host.workers.append(worker)
            workers.append(worker)
        with ThreadPoolExecutor(len(workers)) as pool:
            list(pool.map(lambda w: w.start(ready_timeout=120), workers))
        return workers


# --- the scenario: pending keys of two campaigns, sent under one limit --------------------------

# Three hosts, one of them 20 s behind, and beat twice: on a right host and on the skewed one.
SPECS: list[dict[str, Any]] = [
    {"host": 0, "beat": True, "clock": None},
    {"host": 1, "beat": False, "clock": None},
    {"host": 2, "beat": True, "clock": "-20s"},
]


def load_keys(engine: Engine, campaigns: list[int], keys: int) -> dict[int, dict[str, int]]:
    """`keys` pending keys per campaign, committed at once as one `stocks.submit` would: an
    absolute count each, and a later delta on every tenth. Returns the counts the Market must
    end with."""
    now = datetime.now(UTC)
    later = now + timedelta(milliseconds=1)
    changes: list[tuple[int, Change]] = []
    expected: dict[int, dict[str, int]] = {}
    for campaign in campaigns:
        expected[campaign] = {}
        for i in range(keys):
            sku = f"H{campaign}-{i}"
            count = (i * 7 + campaign) % 1000
            changes.append((len(changes), Change(campaign, sku, None, count, None, now)))
            if i % 10 == 0:
                changes.append((len(changes), Change(campaign, sku, 3, None, None, later)))
                count += 3
            expected[campaign][sku] = count
    store_message(engine, uuid.uuid4().hex, changes, [], lambda c: c)
    return expected


def _succeeded(task: str, log: str) -> int:
    """Celery's `Task stocks.<task>[id] succeeded in …` lines in a worker's log."""
    return len(re.findall(rf"Task stocks\.{task}\[[^\]]+\] succeeded", log))


def run(
    engine: Engine,
    database_url: str,
    broker_url: str,
    log_dir: Path,
    *,
    keys: int,
    limit: int,
    parallel: int,
    timeout: float,
    campaigns: tuple[int, ...] = (11, 12),
    latency_ms: float = 0.0,
) -> dict[str, Any]:
    """The whole scenario on a fresh database and vhost; the figures the Market saw. With
    `latency_ms` the sandbox takes that long over each request, so that requests overlap."""
    with MarketSandbox(
        port=0,
        api_keys=[API_KEY],
        seed=1,
        rate_limit_skus_per_minute=limit,
        request_log_max=1_000_000,
        latency_ms=latency_ms,
    ) as sandbox:
        settings = {
            "rate_limit_skus_per_minute": str(limit),
            "max_parallel_requests_per_campaign": str(parallel),
            "drain_interval_seconds": "0.5",
        }
        with HostsRig(len(SPECS), log_dir, database_url, broker_url, sandbox.port) as rig:
            workers = rig.start_workers(SPECS, **settings)
            started = time.monotonic()
            expected = load_keys(engine, list(campaigns), keys)
            loaded = time.monotonic() - started
            wait_for(
                "every key acknowledged, nothing in flight",
                lambda: pending_keys(engine) == 0 and not sandbox.stats()["in_flight"],
                timeout,
                0.2,
            )
            elapsed = time.monotonic() - started
            time.sleep(1.5)  # what a double beat would still send has had its chance
            logs = [w.log_text() for w in workers]
        stats = sandbox.stats()
        state = sandbox.state()
    per = {str(c): stats["campaigns"].get(str(c), {}) for c in campaigns}
    wrong = sum(
        1
        for c in campaigns
        for sku, count in expected[c].items()
        if state.get(str(c), {}).get(sku, {}).get("count") != count
    )
    ideal_fluid = keys / limit * 60
    return {
        "keys": keys * len(campaigns),
        "campaigns": len(campaigns),
        "limit": limit,
        "parallel_setting": parallel,
        "seconds": round(elapsed, 1),
        "load_seconds": round(loaded, 1),
        "ideal_seconds": round(ideal_fluid, 1),
        # The rolling window lets a full minute's worth go at once: the last batch leaves after
        # (ceil(keys / limit) - 1) minutes.
        "window_bound_seconds": (-(-keys // limit) - 1) * 60,
        "max_rolling_minute": max(p.get("max_skus_accepted_in_window", 0) for p in per.values()),
        "max_in_flight": max(p.get("max_parallel_seen", 0) for p in per.values()),
        "r420": stats["requests_by_status"].get("420", 0),
        "requests_by_status": stats["requests_by_status"],
        "skus_accepted": stats["skus_accepted"],
        "stale_overwrites": stats["stale_overwrites"],
        "wrong_keys": wrong,
        "tasks_by_host": [
            {
                "host": spec["host"],
                "beat": spec["beat"],
                "clock": spec["clock"] or "right",
                "pushes": _succeeded("push", log),
                "drains": _succeeded("drain", log),
                "discarded_drains": log.count("Discarding revoked task: stocks.drain"),
                "sent_200": log.count("status=200"),
            }
            for spec, log in zip(SPECS, logs, strict=True)
        ],
    }
