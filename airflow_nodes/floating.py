"""The cluster address: one IP address the masters share, moved between them by keepalived (VRRP).

Workers and users reach the cluster through it; when the master holding it dies (host killed, network
cut) or its API server stops answering, another master takes it over within seconds. Every master
renders the same keepalived.conf but for its own address (unicast_src_ip) and the others' (unicast_peer).

What VRRP cannot do: the address moves by gratuitous ARP / unsolicited NA, so all masters must share
the layer-2 segment the address belongs to (checked: the address lies in the network of the interface
carrying this master's own address). Clouds whose network ignores ARP need their own API for that.

Everything but gather_facts is pure: gather_facts reads `ip -o addr show` and whether keepalived is
installed; plan_floating makes this master's keepalived.conf and the commands around it from them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from airflow_nodes import execute
from airflow_nodes.context import NodeContext
from airflow_nodes.errors import UserError
from airflow_nodes.plan import Command, PlannedFile, Retirement, Trigger
from airflow_nodes.render import render
from airflow_nodes.target import Target

OPTION = "--floating-address"
TEMPLATE = "servers/keepalived.conf.j2"
# keepalived's name for the health check and for the instance (its log lines quote them)
SCRIPT_NAME = "airflow_api"
INSTANCE_NAME = "airflow_cluster"
# the same on every master: with nopreempt, who holds the address is decided by who got it first
PRIORITY = 100
# an account with nothing of ours: the probe only needs to open a socket to loopback
SCRIPT_USER = "nobody"
# what the probe may be asked to fetch: no quote, space, "#" or "!" (keepalived comments), "$" (its
# parameter substitution) or "\" (its escapes) can reach the config file
_SAFE_URL = re.compile(r"^https?://[A-Za-z0-9\[\]._~:/?&=%+-]+$")
_INTERFACE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")  # IFNAMESIZ - 1, no "/" or whitespace
_ACCOUNT_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# exits 0 when the URL answers 2xx (urlopen raises on 4xx/5xx and on no answer): no curl needed. 3 s: an
# API server on a busy host can take over a second to answer, and a slow answer must not move the address
PROBE_CODE = "import sys,urllib.request;urllib.request.urlopen(sys.argv[1],timeout=3)"


@dataclass(frozen=True)
class FloatingAddress:
    """A checked cluster address: `address` as ipaddress prints it, `prefix` its network's length."""

    address: str
    prefix: int

    @property
    def interface_form(self) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return ipaddress.ip_interface(f"{self.address}/{self.prefix}")


def parse_floating_address(value: str) -> FloatingAddress:
    """Given ADDRESS/PREFIX as typed for --floating-address, return it checked. Raise UserError naming
    the option when it does not parse, is not an address hosts can share (loopback, multicast,
    unspecified, link-local, a network or broadcast address), or the prefix is out of range."""
    text = value.strip()
    if "/" not in text:
        raise UserError(f"{text!r} needs its network's prefix length, as in 10.0.0.100/24", about=OPTION)
    try:
        interface = ipaddress.ip_interface(text)
    except ValueError:
        raise UserError(f"{text!r} is not an IPv4 or IPv6 address with a prefix length", about=OPTION) from None
    address, prefix = interface.ip, interface.network.prefixlen
    kinds = (("loopback", address.is_loopback), ("multicast", address.is_multicast),
             ("unspecified", address.is_unspecified), ("link-local", address.is_link_local))  # fmt: skip
    for kind, matches in kinds:
        if matches:
            raise UserError(f"{address} is a {kind} address, which hosts cannot share", about=OPTION)
    low, high = (8, 32) if address.version == 4 else (64, 128)
    if not low <= prefix <= high:
        raise UserError(f"prefix /{prefix} is outside /{low}../{high} for IPv{address.version}", about=OPTION)
    network = interface.network
    if address.version == 4 and prefix <= 30 and address in (network.network_address, network.broadcast_address):
        raise UserError(f"{address} is the network or broadcast address of {network}", about=OPTION)
    return FloatingAddress(str(address), prefix)


def router_id_for(cluster_name: str) -> int:
    """Given the cluster's name, return its VRRP virtual_router_id (1-255), the same on every master and
    every run. Two clusters on one segment most likely get different ids; with unicast VRRP and
    check_unicast_src a clash only matters to multicast routers using the same id."""
    digest = hashlib.sha256(cluster_name.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 255 + 1


def interface_addresses(ip_addr_output: str) -> list[tuple[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
    """Given the text of `ip -o addr show`, return (interface name, address/prefix) for each address.
    Lines it cannot read are skipped."""
    found = []
    for line in ip_addr_output.splitlines():
        fields = line.split()
        # "2: eth0    inet 10.0.0.5/24 brd ..." (a veth is named "eth0@if7")
        if len(fields) < 4 or fields[2] not in ("inet", "inet6"):
            continue
        name = fields[1].split("@", 1)[0]
        try:
            found.append((name, ipaddress.ip_interface(fields[3])))
        except ValueError:
            continue
    return found


def interface_holding(address: str, ip_addr_output: str) -> str | None:
    """Given an address and the text of `ip -o addr show`, return the interface carrying that address,
    or None when none does."""
    wanted = ipaddress.ip_address(address)
    return next((name for name, held in interface_addresses(ip_addr_output) if held.ip == wanted), None)


def check_on_interface(floating: FloatingAddress, interface: str, ip_addr_output: str) -> None:
    """Raise UserError naming the option unless the floating address lies in the network of an address
    that `interface` carries (per the text of `ip -o addr show`): neighbours only learn a move through
    ARP / NDP on that segment."""
    address = floating.interface_form.ip
    networks = [held.network for name, held in interface_addresses(ip_addr_output) if name == interface]
    if not any(address in network for network in networks):
        shown = ", ".join(str(n) for n in networks) or "no address"
        raise UserError(f"{address} is not in the network of {interface} ({shown})", about=OPTION)


def _host_address(value: str, what: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise UserError(f"{what} {value!r} is not an IP address", about=OPTION) from None
    if address.version != version:
        raise UserError(f"{what} {address} is not IPv{version}, as the floating address is", about=OPTION)
    return str(address)


def probe_command(probe_python: str, health_url: str) -> str:
    """Given an absolute interpreter path and the local API server's health URL, return keepalived's
    `script` value: the interpreter fetching the URL (parameters separated by spaces; one with spaces
    goes in single quotes, keepalived's own rule). Raise UserError when either could break the file."""
    if not probe_python.startswith("/") or not re.fullmatch(r"[A-Za-z0-9_./+-]+", probe_python):
        raise UserError(f"the probe's interpreter must be an absolute plain path: {probe_python!r}", about=OPTION)
    if not _SAFE_URL.match(health_url) or not urlsplit(health_url).hostname:
        raise UserError(f"the health URL {health_url!r} is not a plain http(s) URL", about=OPTION)
    # -I: the account's environment and site-packages play no part in the answer
    return f"{probe_python} -I -c '{PROBE_CODE}' {health_url}"


def keepalived_conf(
    floating: FloatingAddress,
    interface: str,
    this_host: str,
    peers: tuple[str, ...],
    router_id: int,
    health_url: str,
    probe_python: str,
    script_user: str = SCRIPT_USER,
) -> str:
    """Given the checked floating address, the interface carrying this master's address `this_host`,
    the other masters' addresses, the cluster's router id, the local API server's health URL and an
    interpreter to probe it with, return this master's keepalived.conf. Raise UserError naming
    --floating-address when a value would make a broken or ambiguous file."""
    floating = parse_floating_address(f"{floating.address}/{floating.prefix}")  # a hand-made one too
    version = floating.interface_form.ip.version
    this = _host_address(this_host, "this master's address", version)
    others = tuple(_host_address(peer, "a master's address", version) for peer in peers)
    if not others:
        # keepalived would fall back to multicast adverts, which we never want on a shared segment
        raise UserError("a floating address needs at least two masters", about=OPTION)
    if this in others or len(set(others)) != len(others):
        raise UserError(f"the masters' addresses repeat: {', '.join((this, *others))}", about=OPTION)
    if floating.address in (this, *others):
        raise UserError(f"{floating.address} is a master's own address; choose an unused one", about=OPTION)
    if not _INTERFACE_NAME.match(interface):
        raise UserError(f"{interface!r} is not a network interface name", about=OPTION)
    if not 1 <= router_id <= 255:
        raise UserError(f"virtual router id {router_id} is outside 1..255", about=OPTION)
    if not _ACCOUNT_NAME.match(script_user) or script_user == "root":
        raise UserError(f"the health probe must run as an unprivileged account, not {script_user!r}", about=OPTION)
    return render(
        TEMPLATE,
        address=floating.address,
        prefix=floating.prefix,
        interface=interface,
        this_host=this,
        peers=others,
        router_id=router_id,
        priority=PRIORITY,
        probe=probe_command(probe_python, health_url),
        script_name=SCRIPT_NAME,
        instance_name=INSTANCE_NAME,
        script_user=script_user,
    )


KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"  # where Debian's keepalived.service reads it
KEEPALIVED_SERVICE = "keepalived.service"
KEEPALIVED_BIN = "/usr/sbin/keepalived"
PROBE_PYTHON = "/usr/bin/python3"  # the system's: `nobody` can run it, and every Debian host has it
ROOT_INTERFACE = "eth0"  # under --root (a rendered tree, not this host): the interface written


@dataclass(frozen=True)
class FloatingFacts:
    interface: str  # the interface carrying this master's own address
    ip_addr: str  # the text of `ip -o addr show`
    keepalived_installed: bool


def gather_facts(ctx: NodeContext, target: Target) -> FloatingFacts | None:
    """What this host holds for the cluster address: the interface of this master's address, and whether
    keepalived is installed; None where no floating address is wanted. Raise UserError naming the option
    when this master's address is on no interface, or the floating address is not in its network."""
    if not (ctx.cluster.floating_address and ctx.role.schedules) or ctx.node.init_system != "systemd":
        return None  # under supervisord: no keepalived (init refuses --floating-address there)
    floating = parse_floating_address(ctx.cluster.floating_address)
    if not target.real_system:
        return FloatingFacts(ROOT_INTERFACE, "", keepalived_installed=True)
    ip_addr = execute.run(["ip", "-o", "addr", "show"], what="reading this host's addresses").stdout
    own = ctx.own_address
    interface = interface_holding(own, ip_addr)
    if interface is None:
        raise UserError(f"this master's address {own} is on none of this host's interfaces", about=OPTION)
    check_on_interface(floating, interface, ip_addr)
    return FloatingFacts(interface, ip_addr, keepalived_installed=target.path(KEEPALIVED_BIN).exists())


def plan_floating(ctx: NodeContext, facts: FloatingFacts) -> tuple[list[PlannedFile], list[Trigger]]:
    """This master's keepalived.conf and the commands that (re)start keepalived with it (installing the
    package where it is missing: Debian's ships no keepalived.conf, so nothing of the package's is
    replaced). Nothing while this master has no peer yet: the address needs two masters to move between."""
    own, peers = ctx.own_address, ctx.other_masters
    if not peers:
        return [], []
    health_url = f"http://127.0.0.1:{ctx.cluster.web_port}{ctx.line.health_path}"
    conf = keepalived_conf(parse_floating_address(ctx.cluster.floating_address), facts.interface, own, peers,
                           router_id_for(ctx.cluster.name), health_url, PROBE_PYTHON)  # fmt: skip
    apt = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get")
    commands = [] if facts.keepalived_installed else [
        Command((*apt, "update", "-qq"), "the package lists, for what follows"),
        Command((*apt, "install", "-y", "-qq", "keepalived"), "moves the cluster address between the masters"),
    ]  # fmt: skip
    commands += [
        Command(("systemctl", "enable", KEEPALIVED_SERVICE), "the cluster address is held after a reboot"),
        Command(("systemctl", "restart", KEEPALIVED_SERVICE), "the masters or the cluster address changed"),
    ]
    return [PlannedFile(KEEPALIVED_CONF, conf.encode(), 0o644)], [Trigger((KEEPALIVED_CONF,), tuple(commands))]


def retirements() -> list[Retirement]:
    """When the floating address goes (or the node): keepalived stops holding it."""
    return [Retirement(KEEPALIVED_CONF, (Command(("systemctl", "disable", "--now", KEEPALIVED_SERVICE),
                                                 "no cluster address to hold"),))]  # fmt: skip


def check_unused(address: str, timeout: float = 3.0) -> None:
    """Raise UserError naming the option when a host answers at the address: a TCP connection to its SSH
    port that connects, or that a host refuses, means the address is someone's. No answer within the
    timeout, or no route to it (nobody answers its ARP), means it is free to float."""
    try:
        with socket.create_connection((address, 22), timeout=timeout):
            pass
    except ConnectionRefusedError:
        pass
    except OSError:
        return
    raise UserError(f"{address} is in use: a host answers there; choose an unused address", about=OPTION)
