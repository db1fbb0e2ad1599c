"""Several masters: the same cluster file on each of them, and every node enrolled through any of them
let in by all of them.

How changes are ordered: each change of settings (an init with options, an upgrade) raises the file's
serial by one, on the master where it is made; members and revoked keys are unions and need none. Every
few seconds each master's follower asks its peers for the hash of their file (one small request through
their gate) and fetches a file that differs; every master then computes the same merge
(cluster.merge_clusters): the settings of the highest serial (on a tie, of the higher digest of the
settings) and the members any of them knows, less every key revoked on one of them. So a master that was
down catches up as soon as it reaches a peer, and two changes of settings made on two masters within the
same seconds end the same everywhere: one wins, and
the follower of the master whose change lost says so. Nothing here needs a quorum: any master alone
can change the cluster file, which is what keeps changes possible while a master is down.

Members: a node enrolled through a master's gate is first a ",token:" line of that master's
authorized_keys (written by the gate, as the airflow account); its follower adds it to the cluster file.
Every master then renders a ",member" line for each member (sshkeys.KeysFile.converge).

An upgrade (upgrade.py, on one master): while that master's gate says it upgrades, every other master's
follower keeps its Airflow stopped; then it takes the new cluster file and moves to its Airflow as a
worker does (config_sync.follow_master), or, when the upgrade rolled back, starts its own again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from airflow_nodes import statefile, urls
from airflow_nodes.apply import apply, node_lock
from airflow_nodes.atomicfile import write_atomically
from airflow_nodes.cluster import (
    MASTER,
    ClusterConfig,
    ClusterSecrets,
    Member,
    check_member,
    check_served_cluster,
    cluster_digest,
    dump_cluster,
    key_fingerprint,
    merge_clusters,
    parse_cluster,
    settings_of,
)
from airflow_nodes.config_sync import fetch_master_cluster_file, follow_master, stop_airflow
from airflow_nodes.context import NodeContext, load_context
from airflow_nodes.control import control
from airflow_nodes.digest import sha256
from airflow_nodes.errors import OperationError, UserError
from airflow_nodes.execute import NoSuchAccount, as_user
from airflow_nodes.fleet import publish_packages
from airflow_nodes.join import host_key_of, upgrade_in_progress
from airflow_nodes.join import revoke as revoke_here
from airflow_nodes.netio import ProbeFailure, http_get
from airflow_nodes.node import CLUSTER_FILE, HELD_FILE, SSH_KEY_FILE, NodeSettings
from airflow_nodes.nodeplan import NodeCredentials, read_credentials, reconcile_node
from airflow_nodes.polling import wait_until
from airflow_nodes.redaction import redact
from airflow_nodes.sshkeys import keys_file_of, private_key_file, public_line_of
from airflow_nodes.sync import gate_transfer, parse_release_answer
from airflow_nodes.syncing.commands import TransferRunner
from airflow_nodes.syncing.state import record_rendered_config
from airflow_nodes.target import Target

PEER_RESTART_WAIT = 90.0  # seconds a master waits for another's API server before restarting its own


def own_member(ctx: NodeContext, target: Target) -> Member | None:
    """This master as the others know it (its address, sync key and SSH host key), or None before it has
    a key and a host key of its own (a single master needs neither)."""
    key = statefile.read_bytes(target.path(SSH_KEY_FILE))
    address = ctx.own_address
    if not key:
        return None
    try:
        member = Member(ctx.node.node_name, MASTER, address, address, public_line_of(key), host_key_of(target))
        check_member(member, "this master")
    except (UserError, ValueError):
        return None
    return member


def enrolled_here(ctx: NodeContext, target: Target) -> list[Member]:
    """The nodes enrolled through this master's gate, read as the airflow account (its file)."""
    keys = keys_file_of(target, ctx)
    try:  # the child answers in JSON; what it read is checked again here, as root
        found = as_user(ctx.cluster.airflow_user if target.privileged else None,
                        lambda: [dataclasses.asdict(member) for member in keys.enrolled()])  # fmt: skip
    except NoSuchAccount:
        return []
    members = []
    for fields in found if isinstance(found, list) else []:
        with contextlib.suppress(TypeError, UserError):
            member = Member(**fields)
            check_member(member, "authorized_keys")
            members.append(member)
    return members


def with_members(cluster: ClusterConfig, own: Member | None, enrolled: list[Member]) -> ClusterConfig:
    """The cluster file with this master as it is now and the nodes enrolled through it: a name the file
    holds already keeps its entry (revoke it first), a revoked key is never taken back. Members need no
    serial (merge_clusters)."""
    members = {m.name: m for m in cluster.members}
    held = members.get(own.name) if own is not None else None
    if own is not None and held != own and (held is None or held.key == own.key):  # never another node's name
        members[own.name] = own
    for member in enrolled:
        if member.name not in members and key_fingerprint(member.key) not in cluster.revoked_keys:
            members[member.name] = member
    if set(members.values()) == set(cluster.members):
        return cluster
    return dataclasses.replace(cluster, members=tuple(sorted(members.values())))


@dataclass
class PeerLook:
    """What one look at the other masters found."""

    clusters: list[ClusterConfig] = field(default_factory=list)  # the peers' files that differ from ours
    problems: list[str] = field(default_factory=list)  # a line for each peer that could not be read
    answered: set[str] = field(default_factory=set)  # the addresses of the peers that answered
    upgrading: dict[str, str] = field(default_factory=dict)  # a peer upgrading the cluster: address -> version


def look_at_peers(ctx: NodeContext, target: Target, transfer: TransferRunner) -> PeerLook:
    """Ask each other master's gate for its `release` answer, and fetch the cluster file of each that holds
    another than ours, checked as a served file (cluster.check_served_cluster)."""
    ours = sha256(statefile.read_bytes(target.path(CLUSTER_FILE)) or b"")
    look = PeerLook()
    for address in ctx.other_masters:
        destination = f"{ctx.cluster.airflow_user}@{address}"
        try:
            release = parse_release_answer(transfer.ask(destination, None, "release"), destination)
            if release.upgrading:
                look.upgrading[address] = release.upgrading
            if release.cluster_hash != ours:
                text = fetch_master_cluster_file(transfer, destination, None, "")
                peer = parse_cluster(text.decode(errors="replace"), f"{destination}:{CLUSTER_FILE}")
                check_served_cluster(peer, ctx.cluster, f"{destination}:{CLUSTER_FILE}")
                look.clusters.append(peer)
        except (OperationError, UserError) as exc:
            look.problems.append(redact(str(exc), ctx.cluster.secret_values())[:300])
            continue
        look.answered.add(address)  # and we hold what it holds
    return look


def converge_to(
    cluster: ClusterConfig, ctx: NodeContext, target: Target, credentials=None, node: NodeSettings | None = None
) -> None:
    """Apply a changed cluster file (and the node's new settings, when it moved to another Airflow) to
    this master as `init` would, and record its config as what this node should run (health's
    consistency probe compares with it). Run under the node's lock. A merged file any node would refuse
    (past a limit, say) is refused here, and nothing changes."""
    parse_cluster(dump_cluster(cluster), "the merged cluster file")
    apply(reconcile_node(cluster, dump_cluster(cluster).encode(), node or ctx.node, target, previous=ctx.node,
                         credentials=credentials))  # fmt: skip
    record_rendered_config(target, ctx.airflow_cfg)


def lost_to(peer: ClusterConfig, ours: ClusterConfig) -> bool:
    """Whether a peer's file of our serial, with other settings than ours, wins over ours."""
    return (
        settings_of(peer) != settings_of(ours)
        and peer.serial == ours.serial
        and cluster_digest(settings_of(peer)) > cluster_digest(settings_of(ours))
    )


def wait_for_a_peer(ctx: NodeContext, wait: float = PEER_RESTART_WAIT, poll: float = 2.0) -> list[str]:
    """Before this master restarts its daemons for a change another master made: wait, at most `wait`
    seconds, until another master's API server answers (the one that made the change restarts first), so
    that one of them serves the cluster address all along. Return a note when none did."""
    health_urls = [urls.http_url(address, ctx.cluster.web_port) + ctx.line.health_path for address in ctx.other_masters]

    def a_peer_answers() -> bool:
        for url in health_urls:
            with contextlib.suppress(ProbeFailure):
                if http_get(url, timeout=poll).status == 200:
                    return True
        return False

    if wait_until(a_peer_answers, wait, poll):
        return []
    return [f"no other master's API server answered within {wait:g} s: this one restarts all the same"]


@dataclass(frozen=True)
class Converged:
    changed: bool  # this master's cluster file changed
    serial: int
    notes: tuple[str, ...] = ()


def converge_master(target: Target, transfer: TransferRunner | None = None) -> Converged:
    """One round of a master's follower: take what the peers hold, add the nodes enrolled here, write the
    result (the node converged to it exactly as `init` would; moved to the Airflow it names, as a worker
    follows its master), and make authorized_keys let in every member. While a peer upgrades the cluster,
    keep this master's Airflow stopped instead (hold_for_upgrade). Raise UserError on a node that is no
    master."""
    ctx = load_context(target)
    if not ctx.role.creates_cluster:
        raise UserError("this node is no master")
    look = look_at_peers(ctx, target, transfer or gate_transfer(ctx, target))
    notes = look.problems
    if look.upgrading and not upgrade_in_progress(target.root):  # while ours runs, it is the one that goes on
        return Converged(False, ctx.cluster.serial, tuple(notes + hold_for_upgrade(ctx, target, look.upgrading)))
    held_for = held_by(target)
    if held_for and held_for not in look.answered:  # it may be migrating the DB: no Airflow of ours on it
        stopped = stop_airflow(ctx, target)  # a reboot meanwhile started it
        notes.append(f"this master's Airflow stays stopped: {held_for}, whose upgrade stopped it, does not answer "
                     f"(`airflow-node start` here goes on without it); {stopped}")  # fmt: skip
        return Converged(False, ctx.cluster.serial, tuple(notes))
    if look.clusters and settings_of(merge_clusters(ctx.cluster, *look.clusters)) != settings_of(ctx.cluster):
        notes += wait_for_a_peer(ctx)  # a rolling restart: the masters' API servers never all restart at once
    with node_lock(target):
        ctx = load_context(target)  # what an init may have changed meanwhile
        if any(lost_to(peer, ctx.cluster) for peer in look.clusters):
            notes.append(f"the change of the cluster file made here (serial {ctx.cluster.serial}) lost to another "
                         "master's of the same serial: make it again")  # fmt: skip
        merged = merge_clusters(ctx.cluster, *look.clusters)
        merged = with_members(merged, own_member(ctx, target), enrolled_here(ctx, target))
        node, moved = follow_master(ctx, merged, target)  # another Airflow: built beside, and stopped
        changed = merged != ctx.cluster
        if changed or moved:
            converge_to(merged, ctx, target, node=node)
        keys = keys_file_of(target, ctx)
        with contextlib.suppress(NoSuchAccount):
            as_user(ctx.cluster.airflow_user if target.privileged else None, keys.converge, merged, ctx.node.node_name)
        if moved or held_for:  # back to work: on the Airflow the upgrade moved the cluster to, or (rolled back) on ours
            notes += [*moved, control("start", target).summary()]
            target.path(HELD_FILE).unlink(missing_ok=True)
        if moved:  # started: now the fleet view (and the upgrade waiting on it) may count it moved
            publish_packages(NodeContext(merged, node), target)
    return Converged(changed, merged.serial, tuple(notes))


def held_by(target: Target) -> str:
    """The address of the master whose upgrade keeps this one's Airflow stopped, or "" (none)."""
    return (statefile.read_text(target.path(HELD_FILE), limit=256) or "").strip()


def release_hold(target: Target) -> None:
    """`airflow-node start` by hand: this master goes on without the master whose upgrade held it (its
    follower holds it again if that master still upgrades when it answers)."""
    target.path(HELD_FILE).unlink(missing_ok=True)


def hold_for_upgrade(ctx: NodeContext, target: Target, upgrading: dict[str, str]) -> list[str]:
    """A peer upgrades the cluster: stop this master's Airflow (every round: a reboot meanwhile starts it
    again), so that no scheduler of the old Airflow runs on the DB the peer migrates; note for whom, so
    that the round after the upgrade starts it again. Return what to say (on the first round only)."""
    address, version = min(upgrading.items())
    first = held_by(target) != address
    if first:
        write_atomically(target.path(HELD_FILE), f"{address}\n".encode(), 0o600)
    stopped = stop_airflow(ctx, target)
    return [f"{address} upgrades the cluster to Airflow {version}: {stopped}"] if first else []


def say_converged(result: Converged, say: Callable[[str], None]) -> None:
    if result.changed:
        say(f"the cluster file is now at serial {result.serial}")
    for note in result.notes:
        say(note)


def prepare_for_peers(target: Target) -> None:
    """Before a master token is minted: this master gets a sync key of its own (the others let it fetch
    from them) and its place among the members (its address and host key, which the others pin)."""
    ctx = load_context(target)
    if not ctx.role.creates_cluster:
        raise UserError("join-token: run it on a master (this node is a worker)")
    if not ctx.cluster.secrets.admin_password:  # a cluster made before it: the masters' shared admin password
        with node_lock(target):
            ctx = load_context(target)
            secrets = dataclasses.replace(ctx.cluster.secrets, admin_password=ClusterSecrets.generate().admin_password)
            cluster = dataclasses.replace(ctx.cluster, secrets=secrets, serial=ctx.cluster.serial + 1)
            converge_to(cluster, ctx, target)
        ctx = load_context(target)
    if read_credentials(target) is None:
        host_key_of(target)  # no host key, no master joins: say so before anything changes
        with node_lock(target):
            credentials = NodeCredentials(private_key_file(os.urandom(32)), b"")
            converge_to(ctx.cluster, ctx, target, credentials)
    converge_master(target)


def revoke(target: Target, what: str) -> list[str]:
    """`join-token --revoke`: a token of this master's, or a node's key on every master (its key is revoked
    in the cluster file, which no master takes back). Return the tags of what went. Raise UserError when
    nothing has that id or name."""
    try:
        gone = revoke_here(target, what)
    except UserError:
        gone = []
    with node_lock(target):
        ctx = load_context(target)
        member = ctx.cluster.member(what)
        if member is not None:
            revoked = ",".join(sorted(ctx.cluster.revoked_keys | {key_fingerprint(member.key)}))
            members = tuple(m for m in ctx.cluster.members if m.name != what)
            cluster = dataclasses.replace(ctx.cluster, members=members, revoked=revoked)
            converge_to(cluster, ctx, target)
            gone.append(f"member:{what}")
    if not gone:
        raise UserError(f"no token or enrolled node named {what!r}", about="join-token --revoke")
    return gone
