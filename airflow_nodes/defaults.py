"""Option defaults: the one place each lives. The dataclasses that carry a value and the click options
that set it both read it from here (this module imports nothing, so every command can use it)."""

# cluster file (set on the master)
AIRFLOW_HOME = "/opt/airflow"
# the Airflow venv root builds and runs: root's own, outside AIRFLOW_HOME (which the airflow account
# owns, and a task may write)
AIRFLOW_VENV = "/opt/airflow-venv"
WEB_PORT = 8080
FLOWER_PORT = 5555
VISIBILITY_TIMEOUT = 86400  # seconds; longer than the longest task
SYNC_INTERVAL_MINUTES = 5
# seconds between Airflow's looks for new DAG files (its own default, 300, keeps a synced DAG hidden for
# minutes); one look at 10,000 files takes about 0.6 s, 2% of a core (benchmarks/bench_dag_refresh.py)
DAG_REFRESH_INTERVAL = 30

# node file (this node only)
CONCURRENCY = 16
STOP_TIMEOUT = 600  # seconds a worker's running tasks get on stop
SUPERVISORD_CONF = "/etc/supervisor/supervisord.conf"

# sync
MAX_DELETE_RATIO = 0.5  # share of the current DAG files one sync may delete
VALIDATE = "warn"  # byte-compile changed .py files: off, warn or refuse
KEEP_RELEASES = 5
# days a replaced release stays as well (Airflow 3: a run cleared later still runs the DAG version it was
# created with; older than this, its tasks fail at start, saying so)
RELEASE_KEEP_DAYS = 7.0
# Airflow 2, the master: seconds a new release waits for every live worker to hold it before the master's
# own Airflow sees it (a worker's follower fetches it within seconds)
WORKER_WAIT = 120.0
# the follower (`airflow-node follow`, on workers): seconds between its looks at the broker's doorbell and
# at the releases tasks asked for; the workers spread their fetches of a new release over SPLAY_PER_WORKER
# seconds for each live worker, at most FOLLOW_SPLAY (benchmarks/bench_herd.py: 100 workers over 10 s,
# 9 of 100 syncs failed against a stock sshd; over 30 s, none)
FOLLOW_POLL = 2.0
# several masters: seconds between a master's looks at its peers (and refreshes of its fleet record)
PEER_POLL = 10.0
FOLLOW_SPLAY = 30.0
SPLAY_PER_WORKER = 0.3
# seconds a task waits for the release it was created with to be fetched (Airflow 3)
RELEASE_FETCH_WAIT = 120
# seconds between the dag-processor's looks at the published release (one readlink each)
BUNDLE_REFRESH_INTERVAL = 5
LOCK_WAIT = 10.0  # seconds cron's sync and the follower's wait for a running sync before skipping
# seconds `airflow-node sync` by hand waits for a running one (cron's may be following an upgrade, which
# builds a new Airflow): a person expects the sync they asked for, not a skip
MANUAL_LOCK_WAIT = 900.0
# seconds over which the cron line spreads the nodes' syncs (each node waits its own fixed share of
# it): every node's cron fires in the same second, and sshd turns away most of a herd past ten
CRON_SPLAY = 60

# upgrade
BACKUP_DIR = "/var/backups/airflow-node"  # pg_dump of the metadata DB before a migration
UPGRADE_HEALTH_TIMEOUT = 300.0  # seconds the upgraded master gets to report healthy
DRAIN_TIMEOUT = 600.0  # seconds the queued and running tasks get to finish before the migration
# several masters: seconds the others get to stop their Airflow for the upgrade (their followers look every
# PEER_POLL seconds; a scheduler killed rather than stopped counts as stopped once its heartbeat is a minute old)
MASTERS_STOP_WAIT = 150.0
# seconds the upgrade waits for the other masters to be on the new Airflow (each builds it, as a worker does)
MASTERS_FOLLOW_WAIT = 900.0

# health
HEALTH_TIMEOUT = 2.0  # seconds per probe

# join-token
JOIN_TOKEN_TTL = 3600  # seconds a token can enroll workers
JOIN_TOKEN_MAX_TTL = 7 * 86400
