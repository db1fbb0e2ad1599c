"""The cluster address (keepalived VRRP): the rendered keepalived.conf against a golden file, the router
id, reading `ip -o addr show`, and the checks of --floating-address (UserError: the CLI exits 2)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from airflow_nodes.errors import UserError
from airflow_nodes.floating import (
    OPTION,
    FloatingAddress,
    check_on_interface,
    interface_addresses,
    interface_holding,
    keepalived_conf,
    parse_floating_address,
    probe_command,
    router_id_for,
)

GOLDEN = Path(__file__).parent / "golden" / "floating"
HEALTH_URL = "http://127.0.0.1:8080/api/v2/monitor/health"
PYTHON = "/usr/bin/python3"
# `ip -o addr show` of a master: a veth (named with its peer's index), loopback, IPv6
IP_ADDR = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
1: lo    inet6 ::1/128 scope host \\       valid_lft forever preferred_lft forever
2: eth0@if7    inet 10.20.0.11/24 brd 10.20.0.255 scope global eth0\\       valid_lft forever preferred_lft forever
2: eth0@if7    inet 10.20.0.100/24 scope global secondary eth0\\       valid_lft forever preferred_lft forever
2: eth0@if7    inet6 fd00:20::11/64 scope global \\       valid_lft forever preferred_lft forever
2: eth0@if7    inet6 fe80::1c:ff:fe00:11/64 scope link \\       valid_lft forever preferred_lft forever
3: ens4    inet 192.168.9.5/16 brd 192.168.255.255 scope global ens4\\       valid_lft forever preferred_lft forever
"""


def conf_for(this_host: str, peers: tuple[str, ...], **overrides: object) -> str:
    values: dict = dict(floating=parse_floating_address("10.20.0.100/24"), interface="eth0", this_host=this_host,
                        peers=peers, router_id=router_id_for("prod"), health_url=HEALTH_URL,
                        probe_python=PYTHON)  # fmt: skip
    values.update(overrides)
    return keepalived_conf(**values)


def test_rendered_keepalived_conf_matches_golden_file():
    rendered = conf_for("10.20.0.11", ("10.20.0.12", "10.20.0.13")).encode()
    golden = GOLDEN / "keepalived-10.20.0.11.conf"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(rendered)
    assert rendered == golden.read_bytes(), f"UPDATE_GOLDEN=1, review {golden}"


def test_masters_render_the_same_conf_but_for_their_own_address_and_their_peers():
    first = conf_for("10.20.0.11", ("10.20.0.12",)).splitlines()
    second = conf_for("10.20.0.12", ("10.20.0.11",)).splitlines()
    differ = [(a.strip(), b.strip()) for a, b in zip(first, second, strict=True) if a != b]
    assert differ == [("unicast_src_ip 10.20.0.11", "unicast_src_ip 10.20.0.12"), ("10.20.0.12", "10.20.0.11")]


def test_every_master_starts_as_backup_with_equal_priority_nopreempt_and_no_password():
    conf = conf_for("10.20.0.11", ("10.20.0.12",))
    lines = {line.strip() for line in conf.splitlines() if not line.lstrip().startswith("#")}
    assert {"state BACKUP", "priority 100", "nopreempt", "advert_int 1", "check_unicast_src"} <= lines
    assert {"script_user nobody", "enable_script_security", "weight 0", "init_fail"} <= lines
    assert "10.20.0.100/24 dev eth0" in lines
    settings = "\n".join(lines)
    assert "authentication" not in settings and "auth_" not in settings and "vrrp_strict" not in settings
    assert conf.endswith("}\n")


def test_the_probe_is_one_keepalived_script_value_that_python_runs_without_curl():
    probe = probe_command(PYTHON, HEALTH_URL)
    # keepalived splits the script at unquoted spaces, keeps a single-quoted parameter whole, as sh does
    assert shlex.split(probe) == [PYTHON, "-I", "-c", shlex.split(probe)[3], HEALTH_URL]
    assert "urllib.request.urlopen(sys.argv[1]" in probe and "curl" not in probe
    # nothing keepalived's parser reads specially: comments, parameter substitution, escapes, quotes
    assert not set(probe) & set('"#!$\\')


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/health", 'http://127.0.0.1:8080/health"; touch /tmp/x', "http://127.0.0.1/a b",
     "http://127.0.0.1/#frag", "http://127.0.0.1/$HOME", "http:///health", "http://127.0.0.1/a\\b"],
)  # fmt: skip
def test_a_health_url_that_could_break_the_conf_is_refused(url):
    with pytest.raises(UserError) as raised:
        conf_for("10.20.0.11", ("10.20.0.12",), health_url=url)
    assert raised.value.about == OPTION


def test_router_id_is_stable_and_in_range():
    assert router_id_for("prod") == router_id_for("prod") == 3
    ids = {router_id_for(f"cluster-{n}") for n in range(2000)}
    assert min(ids) >= 1 and max(ids) <= 255 and len(ids) == 255


def test_interface_holding_reads_ip_o_addr_show():
    assert interface_holding("10.20.0.100", IP_ADDR) == "eth0"  # the "@if7" of a veth is not its name
    assert interface_holding("fd00:20:0::11", IP_ADDR) == "eth0"  # compared as addresses, not text
    assert interface_holding("192.168.9.5", IP_ADDR) == "ens4"
    assert interface_holding("10.20.0.99", IP_ADDR) is None
    assert interface_holding("10.20.0.100", "") is None
    assert len(interface_addresses(IP_ADDR + "garbage line\n4: x    inet not-an-address\n")) == 7


def test_the_address_must_be_in_the_network_of_the_interface():
    check_on_interface(parse_floating_address("10.20.0.100/24"), "eth0", IP_ADDR)
    check_on_interface(parse_floating_address("fd00:20::100/64"), "eth0", IP_ADDR)
    check_on_interface(parse_floating_address("10.20.0.100/32"), "eth0", IP_ADDR)
    for address, interface in (("10.21.0.100/24", "eth0"), ("10.20.0.100/24", "ens4"), ("10.20.0.100/24", "eth9")):
        with pytest.raises(UserError) as raised:
            check_on_interface(parse_floating_address(address), interface, IP_ADDR)
        assert raised.value.about == OPTION and "\n" not in str(raised.value)


def test_a_good_address_is_returned_in_ipaddress_form():
    assert parse_floating_address(" 10.20.0.100/24 ") == FloatingAddress("10.20.0.100", 24)
    assert parse_floating_address("FD00:20:0::100/64") == FloatingAddress("fd00:20::100", 64)
    assert parse_floating_address("10.20.0.100/32").prefix == 32


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("10.20.0.100", "prefix length"),
        ("prod.example.com/24", "is not an IPv4 or IPv6 address"),
        ("10.20.0.300/24", "is not an IPv4 or IPv6 address"),
        ("10.20.0.100/33", "is not an IPv4 or IPv6 address"),
        ("127.0.0.5/8", "loopback"),
        ("::1/128", "loopback"),
        ("224.0.0.18/24", "multicast"),
        ("ff02::12/64", "multicast"),
        ("0.0.0.0/8", "unspecified"),
        ("::/64", "unspecified"),
        ("169.254.10.1/16", "link-local"),
        ("fe80::5/64", "link-local"),
        ("10.20.0.100/7", "outside /8../32"),
        ("fd00::5/63", "outside /64../128"),
        ("10.20.0.0/24", "network or broadcast"),
        ("10.20.0.255/24", "network or broadcast"),
    ],
)
def test_a_bad_floating_address_is_a_user_error_naming_the_option(value, says):
    with pytest.raises(UserError) as raised:
        parse_floating_address(value)
    message = str(raised.value)
    assert raised.value.about == OPTION and message.startswith("--floating-address: ")
    assert says in message and "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (dict(peers=()), "at least two masters"),
        (dict(peers=("10.20.0.11",)), "repeat"),
        (dict(peers=("10.20.0.12", "10.20.0.12")), "repeat"),
        (dict(peers=("10.20.0.100",)), "a master's own address"),
        (dict(this_host="fd00:20::11"), "is not IPv4"),
        (dict(peers=("master-2",)), "is not an IP address"),
        (dict(interface="eth0 dev lo"), "not a network interface name"),
        (dict(router_id=0), "outside 1..255"),
        (dict(script_user="root"), "unprivileged"),
        (dict(probe_python="python3"), "absolute plain path"),
        (dict(floating=FloatingAddress("127.0.0.9", 24)), "loopback"),
    ],
)
def test_values_that_would_make_a_broken_conf_are_user_errors(overrides, says):
    with pytest.raises(UserError) as raised:
        conf_for(overrides.pop("this_host", "10.20.0.11"), overrides.pop("peers", ("10.20.0.12",)), **overrides)
    assert raised.value.about == OPTION and says in str(raised.value) and "\n" not in str(raised.value)
