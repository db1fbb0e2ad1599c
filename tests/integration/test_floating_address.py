"""The cluster address with real keepalived: two masters and a client in network namespaces on a bridge.

Each master namespace runs keepalived with the conf `keepalived_conf` renders and a small HTTP server
on 0.0.0.0:PORT that answers every path with the master's name: it is both the API server whose health
the probe checks (on 127.0.0.1) and what the client reaches through the cluster address. Only
namespaces named afn-vrrp-* and addresses in 10.231.44.0/24 are made; all are deleted afterwards.
Move times are printed (shown with -q too).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from airflow_nodes.floating import interface_holding, keepalived_conf, parse_floating_address, router_id_for

from conftest import wait_for

KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"
# the probe runs as `nobody`, which must be able to run this interpreter (not one under root's 0700 dirs)
PROBE_PYTHON = "/usr/bin/python3"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


@pytest.fixture(autouse=True)
def tools_installed():
    for path in (KEEPALIVED, PROBE_PYTHON, shutil.which("ip") or "/sbin/ip"):
        if not os.path.exists(path):
            pytest.fail(f"{path} is missing: run `bash scripts/run-tests` (it installs keepalived, iproute2, python3)")


ADDRESS = "10.231.44.100"
FLOATING = parse_floating_address(f"{ADDRESS}/24")
HOSTS = {"m1": "10.231.44.11", "m2": "10.231.44.12", "client": "10.231.44.20"}
MASTERS = ("m1", "m2")
PORT = 8080
HEALTH_URL = f"http://127.0.0.1:{PORT}/api/v2/monitor/health"
MOVE_WITHIN = 10  # seconds: what the brief promises for a master's loss

# answers every GET with the master's name; prints "ready" once it listens
NAME_SERVER = """
import http.server, sys
name = sys.argv[1].encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), Handler)
print("ready", flush=True)
server.serve_forever()
"""
FETCH = "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=0.5).read().decode())"


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10).stdout


def _kill_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group we started (keepalived and its VRRP child), SIGKILL if it lingers."""
    if process.poll() is None:
        _kill_group(process, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            _kill_group(process, signal.SIGKILL)
            process.wait(10)
    _kill_group(process, signal.SIGKILL)  # a child left behind by a parent that died first


class Lab:
    """A bridge namespace joining m1, m2 and client, each with eth0 on 10.231.44.0/24."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        tag = uuid.uuid4().hex[:6]
        self.bridge = f"afn-vrrp-{tag}-br"
        self.ns = {host: f"afn-vrrp-{tag}-{host}" for host in HOSTS}
        self.keepalived: dict[str, subprocess.Popen] = {}
        self.web: dict[str, subprocess.Popen] = {}
        self.made: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_namespace(self.bridge)
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for host, address in HOSTS.items():
            ns = self.ns[host]
            self._add_namespace(ns)
            _ip("-n", self.bridge, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", self.bridge, "link", "set", host, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def exec_argv(self, host: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[host], *argv]

    def start_web(self, host: str) -> None:
        argv = self.exec_argv(host, sys.executable, "-I", "-c", NAME_SERVER, host, str(PORT))
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                   start_new_session=True)  # fmt: skip
        self.web[host] = process
        assert process.stdout is not None and process.stdout.readline().strip() == "ready", f"{host}'s server"

    def conf(self, host: str) -> str:
        ip_text = _ip("-n", self.ns[host], "-o", "addr", "show")
        interface = interface_holding(HOSTS[host], ip_text)
        assert interface == "eth0"
        peers = tuple(HOSTS[other] for other in MASTERS if other != host)
        return keepalived_conf(FLOATING, interface, HOSTS[host], peers, router_id_for("afn-vrrp-test"), HEALTH_URL,
                               PROBE_PYTHON)  # fmt: skip

    def start_keepalived(self, host: str) -> None:
        home = self.workdir / host
        home.mkdir(exist_ok=True)
        conf = home / "keepalived.conf"
        conf.write_text(self.conf(host))
        argv = self.exec_argv(host, KEEPALIVED, "--dont-fork", "--log-console", "--log-detail", "--vrrp",
                              "--use-file", str(conf), "--pid", str(home / "keepalived.pid"),
                              "--vrrp_pid", str(home / "vrrp.pid"))  # fmt: skip
        log = (home / "keepalived.log").open("a")
        # its own process group: kill -9 of the group takes the VRRP child down at the same instant,
        # as a host's death would (the child gets SIGTERM when only the parent dies, and resigns cleanly)
        self.keepalived[host] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def log(self, host: str) -> str:
        path = self.workdir / host / "keepalived.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def holders(self) -> list[str]:
        return [h for h in MASTERS if interface_holding(ADDRESS, _ip("-n", self.ns[h], "-o", "addr", "show"))]

    def client_reaches(self) -> str:
        """The name the client gets from http://ADDRESS:PORT/, or "" when nothing answers."""
        argv = self.exec_argv("client", sys.executable, "-I", "-S", "-c", FETCH, f"http://{ADDRESS}:{PORT}/")
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return result.stdout.strip() if result.returncode == 0 else ""

    def close(self) -> None:
        """Stop every process started here, then delete the namespaces, whatever fails on the way."""
        try:
            for process in [*self.keepalived.values(), *self.web.values()]:
                try:
                    _stop(process)
                except Exception:  # noqa: BLE001 - the others must still be stopped
                    _kill_group(process, signal.SIGKILL)
        finally:
            for name in reversed(self.made):
                subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture
def lab(tmp_path):
    built = Lab(tmp_path)
    try:
        for host in MASTERS:
            built.start_web(host)
            built.start_keepalived(host)
        yield built
    finally:
        built.close()
        leftover = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert built.bridge[:-3] not in leftover, "a namespace of the test was left behind"


def report(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n[floating address] {line}", end="")


def settled_holder(lab: Lab) -> str:
    """Wait until exactly one master holds the address and the client reaches it; return its name."""
    holders = wait_for(lambda: (h := lab.holders()) and len(h) == 1 and h, 15, "exactly one holder")
    holder = holders[0]
    wait_for(lambda: lab.client_reaches() == holder, 10, f"the client reaching {holder} through {ADDRESS}")
    return holder


def measure_move(lab: Lab, to: str, started: float) -> tuple[float, float]:
    """Poll until `to` alone holds the address and the client gets `to`'s name; return both delays."""
    holds = reached = None
    deadline = started + MOVE_WITHIN + 5
    while time.monotonic() < deadline and (holds is None or reached is None):
        if holds is None and to in lab.holders():
            holds = time.monotonic() - started
        if reached is None and lab.client_reaches() == to:
            reached = time.monotonic() - started
        time.sleep(0.05)
    assert holds is not None, f"{to} did not take {ADDRESS}; its log:\n{lab.log(to)[-3000:]}"
    assert reached is not None, f"the client never reached {to} through {ADDRESS}"
    return holds, reached


def stays_with(lab: Lab, holder: str, seconds: float) -> None:
    """Over `seconds` (more than VRRP's master-down interval), the address stays with `holder` alone."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert lab.holders() == [holder], f"the address moved: holders {lab.holders()}"
        time.sleep(0.2)
    assert lab.client_reaches() == holder


def backup_again(lab: Lab, host: str, since: int) -> bool:
    """keepalived on host has entered BACKUP (after its health script passed) since log offset `since`."""
    return "Entering BACKUP STATE" in lab.log(host)[since:]


def test_keepalived_accepts_the_rendered_conf(tmp_path):
    """keepalived's own parser: --config-test writes every complaint to the file it is given (2.2.7 then
    dies of SIGTERM whatever it found when script_user is set: acassen/keepalived#2617, fixed in 2.2.8)."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text(keepalived_conf(FLOATING, "eth0", HOSTS["m1"], (HOSTS["m2"],), 7, HEALTH_URL, PROBE_PYTHON))
    complaints = tmp_path / "complaints.txt"
    subprocess.run([KEEPALIVED, f"--config-test={complaints}", "--use-file", str(conf)], capture_output=True,
                   timeout=30, check=False)  # fmt: skip
    assert complaints.read_text() == ""
    # the check itself works: a keyword keepalived does not know is reported
    conf.write_text(conf.read_text().replace("nopreempt", "nopreempt_typo"))
    subprocess.run([KEEPALIVED, f"--config-test={complaints}", "--use-file", str(conf)], capture_output=True,
                   timeout=30, check=False)  # fmt: skip
    assert "nopreempt_typo" in complaints.read_text()


def test_one_master_holds_the_address_and_it_moves_when_the_holder_is_cut_off(lab, capsys):
    started = time.monotonic()
    holder = settled_holder(lab)
    took = time.monotonic() - started
    report(capsys, f"start: {holder} alone holds {ADDRESS} and answers the client after {took:.1f} s")
    other = next(m for m in MASTERS if m != holder)

    cut = time.monotonic()
    _ip("-n", lab.ns[holder], "link", "set", "eth0", "down")
    holds, reached = measure_move(lab, other, cut)
    report(capsys, f"link of {holder} cut: {other} holds after {holds:.1f} s, client reaches it after {reached:.1f} s")
    assert reached <= MOVE_WITHIN
    assert lab.holders() == [other], "the cut-off master still holds the address"

    offset = len(lab.log(holder))
    _ip("-n", lab.ns[holder], "link", "set", "eth0", "up")
    wait_for(lambda: backup_again(lab, holder, offset), 15, f"{holder} back as BACKUP")
    stays_with(lab, other, 5)  # nopreempt: no second move
    report(capsys, f"link of {holder} back: it is BACKUP, {ADDRESS} stays with {other}")


def test_the_address_moves_when_the_holders_keepalived_dies_and_stays_when_it_returns(lab, capsys):
    holder = settled_holder(lab)
    other = next(m for m in MASTERS if m != holder)

    killed = time.monotonic()
    _kill_group(lab.keepalived[holder], signal.SIGKILL)  # no resignation advert: as if the host died
    lab.keepalived[holder].wait(10)
    holds, reached = measure_move(lab, other, killed)
    report(capsys, f"keepalived of {holder} killed (-9): {other} holds after {holds:.1f} s, "
                   f"client reaches it after {reached:.1f} s")  # fmt: skip
    assert reached <= MOVE_WITHIN
    # the dead daemon could not remove the address: the kernel of a host that lives on still has it
    stale = holder in lab.holders()
    report(capsys, f"after the kill, {holder} still carries {ADDRESS}: {stale} (the client follows {other}'s ARP)")

    offset = len(lab.log(holder))
    lab.start_keepalived(holder)
    wait_for(lambda: backup_again(lab, holder, offset), 15, f"{holder}'s new keepalived as BACKUP")
    wait_for(lambda: lab.holders() == [other], 5, f"{holder}'s new keepalived dropping the stale address")
    stays_with(lab, other, 5)
    report(capsys, f"keepalived of {holder} restarted: BACKUP, {ADDRESS} stays with {other} alone")


def test_the_address_leaves_a_master_whose_api_server_stops_answering(lab, capsys):
    holder = settled_holder(lab)
    other = next(m for m in MASTERS if m != holder)

    stopped = time.monotonic()
    lab.web[holder].kill()
    lab.web[holder].wait(10)
    holds, reached = measure_move(lab, other, stopped)
    report(capsys, f"API server of {holder} killed: {other} holds after {holds:.1f} s, "
                   f"client reaches it after {reached:.1f} s")  # fmt: skip
    assert reached <= MOVE_WITHIN
    assert lab.holders() == [other]
    assert re.search(r"VRRP_Script\(airflow_api\) failed", lab.log(holder)), lab.log(holder)[-2000:]
