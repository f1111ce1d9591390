"""Nothing of the local Flink or Spark cluster is reachable from another host.

None of the cluster's ports has authentication: Beam's job server and artifact service, the
worker pool and the fn-API servers a TaskManager or executor opens for its SDK harnesses all
let whoever reaches them run code. `facebeam flink|spark up` binds all of them to loopback
(pipelines/local/listening.py) and refuses to start when one is not.

The test stands where another host would: a network namespace with its own address
(10.200.N.2), joined to this host by a veth pair (10.200.N.1) and routed through it. With the
cluster up and an embed job running on it, it connects from there to every port the cluster's
processes listen on, at each of this host's non-loopback addresses. None may connect. A socket
bound to every interface, opened by the test, must connect: the namespace does reach the host.
Creating the namespace needs root (CAP_NET_ADMIN), as `ip netns add` does.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import psutil
import pytest

from facebeam.pipelines.local import flink as flink_local
from facebeam.pipelines.local import job_server, listening
from facebeam.pipelines.local import spark as spark_local
from facebeam.pipelines.local import workers as pools
from facebeam.pipelines.local.toolkit import RunnerSetupError
from facebeam.pipelines.runner.presets import RUNNER_PRESETS
from tests.helpers import sample_images

WORKERS = 2
MODULES = {"flink": flink_local, "spark": spark_local}
PRESET = {"flink": "flink-cluster", "spark": "spark-cluster"}
#: Connects from inside the namespace to each (host, port) of argv[1]; prints those that answered.
PROBE = """
import json, socket, sys
ok = []
for host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=2).close()
        ok.append([host, port])
    except OSError:
        pass
print(json.dumps(ok))
"""


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def netns():
    """(namespace name, this host's addresses as seen from it): a namespace with one veth link to this host."""
    assert os.geteuid() == 0, "this test makes a network namespace and a veth pair: run it as root (CAP_NET_ADMIN)"
    n = os.getpid() % 250 + 1
    name, host_if, ns_if = f"fb-listen-{os.getpid()}", f"fbl{os.getpid()}h"[-15:], f"fbl{os.getpid()}n"[-15:]
    here, there = f"10.200.{n}.1", f"10.200.{n}.2"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", name)
        _ip("addr", "add", f"{here}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", name, "addr", "add", f"{there}/30", "dev", ns_if)
        _ip("-n", name, "link", "set", ns_if, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "route", "add", "default", "via", here)
        # Every IPv4 address of this host but loopback: the veth end, and the host's own interfaces.
        hosts = sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                        if a.family == socket.AF_INET and not a.address.startswith("127.")})
        assert here in hosts, hosts
        yield name, hosts
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)  # removes both veth ends
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


def reachable(netns, targets) -> set:
    """The (host, port) of `targets` that accept a TCP connection from inside the namespace."""
    name, _ = netns
    out = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", PROBE, json.dumps(sorted(targets))],
                         check=True, capture_output=True, text=True, timeout=60 + 3 * len(targets)).stdout
    return {tuple(x) for x in json.loads(out)}


@pytest.fixture
def wildcard_socket():
    """The control: a socket on every interface, as Beam's servers opened theirs."""
    with socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True) as s:
        yield s.getsockname()[1]


def test_the_namespace_reaches_a_wildcard_socket_and_not_a_loopback_one(netns, wildcard_socket):
    _, hosts = netns
    with socket.create_server(("127.0.0.1", 0)) as lo:
        targets = {(h, p) for h in hosts for p in (wildcard_socket, lo.getsockname()[1])}
        assert reachable(netns, targets) == {(h, wildcard_socket) for h in hosts}


def test_up_refuses_a_cluster_process_that_listens_beyond_loopback(caplog):
    """`listening.check`, as `up` runs it, on a real process with one wildcard and one loopback socket."""
    child = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, time\n"
        "a = socket.create_server(('', 0)); b = socket.create_server(('127.0.0.1', 0))\n"
        "print(a.getsockname()[1], b.getsockname()[1], flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        wide, lo = map(int, child.stdout.readline().split())
        parent = os.getpid()
        assert {(x.port, x.loopback) for x in listening.listeners([parent])} >= {(wide, False), (lo, True)}
        stopped = []
        with pytest.raises(RunnerSetupError) as err:
            listening.check("flink", [parent], [], "/agent.jar", allow=False, stop=lambda: stopped.append(1))
        msg = str(err.value)
        assert "\n" not in msg and f"0.0.0.0:{wide}" in msg and f":{lo} " not in msg, msg
        assert "facebeam flink down && facebeam flink up" in msg and "--allow-exposed-ports" in msg
        assert stopped == [1]
        # A JVM that opens Beam's servers for jobs must carry the agent, even while it listens on nothing.
        with pytest.raises(RunnerSetupError, match=f"pid\\(s\\) {child.pid} run without the loopback agent"):
            listening.check("spark", [], [child.pid], "/agent.jar", allow=False, stop=lambda: None)
        kept = listening.check("flink", [parent], [], "/agent.jar", allow=True, stop=lambda: stopped.append(2))
        assert [x.port for x in kept] == [wide] and stopped == [1]
        assert any("--allow-exposed-ports" in r.getMessage() for r in caplog.records)
    finally:
        child.kill()
        child.wait()


@pytest.fixture(scope="module", params=["flink", "spark"])
def cluster(request, local_cluster):
    which = request.param
    return which, MODULES[which], local_cluster(which, WORKERS)


def _beam_ports(module, before: set) -> set:
    """Ports the cluster's processes listen on now that they did not at `up` (the fn-API servers)."""
    return {x.port for x in listening.listeners(module.cluster_pids())} - before


def test_no_port_of_the_cluster_is_reachable_during_a_job(cluster, netns, wildcard_socket, tmp_path):
    which, module, info = cluster
    assert info["exposed"] == []
    served = job_server.info(which)
    assert served and served["agent"] and f"-javaagent:{served['agent']}" in " ".join(
        psutil.Process(served["pid"]).cmdline())
    at_up = {x.port for x in listening.listeners(module.cluster_pids())}
    assert {served["port"], served["artifact_port"]} <= at_up
    # Three copies of the sample: a job long enough to be probed while it runs (24 photos took under 3 s).
    photos = tmp_path / "photos"
    photos.mkdir()
    for copy in range(3):
        for path in sample_images():
            shutil.copyfile(path, photos / f"{copy}-{os.path.basename(path)}")
    cmd = [os.path.join(os.path.dirname(sys.executable), "facebeam"), "embed", "--input", str(photos),
           "--output", str(tmp_path / "out"), *RUNNER_PRESETS[PRESET[which]]]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The fn-API servers (control, data, state, logging, provisioning, artifacts) open when the
        # job's first stage asks the worker pool for harnesses, and stay until the job ends.
        pool = psutil.Process(pools.pool_info(which)["pid"])
        deadline = time.monotonic() + 300
        while not (pool.children() and len(_beam_ports(module, at_up)) >= 4) and job.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(3)  # the harnesses the pool started have connected: all the stage's servers are open
        during = listening.listeners(module.cluster_pids())
        assert job.poll() is None, f"the job ended before its fn-API servers were seen:\n{job.stdout.read()[-3000:]}"
        assert len({x.port for x in during} - at_up) >= 4, (at_up, during)
        assert [x for x in during if not x.loopback] == []
        _, hosts = netns
        targets = {(h, x.port) for h in hosts for x in during} | {(h, wildcard_socket) for h in hosts}
        answered = reachable(netns, targets)
        assert answered == {(h, wildcard_socket) for h in hosts}, (sorted(answered), [str(x) for x in during])
        # Open before and after the probe, so open while it ran: refused for their address, not gone.
        still = {x.port for x in listening.listeners(module.cluster_pids())}
        assert len(({x.port for x in during} - at_up) & still) >= 4, (during, still)
    finally:
        out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-3000:]
    assert f"embedded {3 * len(sample_images())} photos" in out, out[-3000:]


def test_a_direct_run_listens_on_loopback_only(netns, wildcard_socket, tmp_path):
    """A local (Direct, multi-process) embed: the fn-API servers its runner opens for the worker processes
    (control, data, state, logging, and one logging server per worker) listen on loopback, and the namespace
    reaches none of them."""
    photos = tmp_path / "photos.txt"
    photos.write_text("\n".join(sample_images()[:24]) + "\n")
    cmd = [os.path.join(os.path.dirname(sys.executable), "facebeam"), "embed", "--input", str(photos),
           "--output", str(tmp_path / "out")]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Four servers for the runner, then a logging server for each worker (one per core by default).
        servers = 4 + os.cpu_count()
        deadline = time.monotonic() + 300
        during = []
        while len({x.port for x in during}) < servers and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            during = listening.listeners([job.pid])
        assert job.poll() is None, f"the job ended before its servers were seen:\n{job.stdout.read()[-3000:]}"
        assert len({x.port for x in during}) >= servers, during
        assert [str(x) for x in during if not x.loopback] == []
        _, hosts = netns
        targets = {(h, x.port) for h in hosts for x in during} | {(h, wildcard_socket) for h in hosts}
        assert reachable(netns, targets) == {(h, wildcard_socket) for h in hosts}
    finally:
        out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-3000:]
    assert "embedded 24 photos" in out, out[-3000:]
