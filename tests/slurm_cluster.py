"""A real single-node SLURM for the tests marked ``slurm``.

:func:`start_slurm` installs the Debian packages when the daemons are missing (as root),
then starts ``munged``, ``slurmctld`` and ``slurmd`` with every file under one temporary
folder: the munge key and socket, a generated ``slurm.conf`` (read through ``SLURM_CONF``,
so ``/etc/slurm`` is never touched), state, spool, pid and log files. The controller and
node daemons listen on free ports, so two test sessions on one machine do not collide.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

# Keep in step with .ci/apt-packages (CI installs them before the tests).
PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "squeue", "sbatch", "srun", "scancel")
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"

STARTUP_TIMEOUT_S = 120  # munged + slurmctld + slurmd up and the node idle: seconds on a laptop
STOP_TIMEOUT_S = 30
APT_TIMEOUT_S = 900


class SlurmStartError(RuntimeError):
    """The daemons did not come up; the message holds their log tails."""


@dataclasses.dataclass
class SlurmNode:
    """A running single-node SLURM.

    Attributes
    ----------
    root : Path
        The temporary folder holding its configuration, state and logs.
    conf : Path
        Its ``slurm.conf``.
    hostname : str
        The node's name (this machine's short host name).
    env : dict of str
        Environment variables the SLURM commands need (``SLURM_CONF``), also set in
        ``os.environ`` while the fixture is alive.
    processes : dict of str to subprocess.Popen
        The daemons, by name, in start order.
    """

    root: Path
    conf: Path
    hostname: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = dataclasses.field(default_factory=dict)

    def run(
        self, *args: str, timeout: float = 60, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this node (``env``: more variables); its output as text."""
        return subprocess.run(
            args, env={**os.environ, **self.env, **(env or {})}, capture_output=True, text=True,
            timeout=timeout, check=check,
        )  # fmt: skip

    def jobs(self) -> list[str]:
        """Ids of the jobs pending or running (``squeue``)."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()

    def jobs_after_end(self, ids: list[str], timeout: float = 60) -> list[str]:
        """Those of ``ids`` still in ``squeue`` once they are gone or ``timeout`` s have passed.

        A cancelled job lingers a few seconds while slurmd ends its processes.
        """
        deadline = time.monotonic() + timeout
        while (left := [i for i in self.jobs() if i in ids]) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def node_state(self) -> str:
        """The node's state as ``sinfo`` prints it (``idle``, ``alloc``, ``down*``...); ``""`` if unknown."""
        out = self.run("sinfo", "-h", "-o", "%t", check=False, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    def log_tails(self, lines: int = 20) -> str:
        """The last lines of every daemon's log and output (non-empty ones), for failure messages."""
        parts = []
        for log in sorted((self.root / "log").iterdir()):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            if tail:
                parts.append(f"--- {log} ---\n" + "\n".join(tail))
        return "\n".join(parts)


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), SBIN_PATH]))


def _missing_commands() -> list[str]:
    return [name for name in DAEMONS + CLIENTS if _which(name) is None]


def ensure_installed() -> None:
    """Install the Debian packages of SLURM and munge when a command is missing.

    Skips the calling test (``pytest.skip``) when that is not possible: not root, no
    ``apt-get``, or apt failing (no network...).
    """
    missing = _missing_commands()
    if not missing:
        return
    why = f"SLURM commands missing ({', '.join(missing)})"
    if os.geteuid() != 0:
        pytest.skip(f"{why} and not root: install the Debian packages {' '.join(PACKAGES)}")
    if _which("apt-get") is None:
        pytest.skip(f"{why} and no apt-get to install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    out = subprocess.run(install, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
    if out.returncode != 0:  # stale package lists: update once, then try again
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=APT_TIMEOUT_S)
        out = subprocess.run(install, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
    if out.returncode != 0 or _missing_commands():
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        pytest.skip(f"{why}; apt-get install {' '.join(PACKAGES)} failed: {last[0]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_memory_mb() -> int:
    """Memory to declare for the node: MemTotal less a margin (slurmd drains a node that has less)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total_mb = int(line.split()[1]) // 1024
            return max(256, total_mb - max(512, total_mb // 10))
    raise SlurmStartError("no MemTotal in /proc/meminfo")


def write_slurm_conf(root: Path, hostname: str, munge_socket: Path) -> Path:
    """Write the ``slurm.conf`` of a one-node cluster whose files all live under ``root``.

    Parameters
    ----------
    root : Path
        Folder with ``state``, ``spool``, ``log`` and ``run`` subfolders.
    hostname : str
        The node's name; the daemons reach it at 127.0.0.1.
    munge_socket : Path
        Socket of the ``munged`` to authenticate with.

    Returns
    -------
    Path
        The written ``root / "slurm.conf"``.
    """
    cpus = os.cpu_count() or 1
    memory = _real_memory_mb()
    settings = {
        "ClusterName": "batmltest",
        "SlurmctldHost": f"{hostname}(127.0.0.1)",
        "SlurmctldPort": _free_port(),
        "SlurmdPort": _free_port(),
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={munge_socket}",
        "StateSaveLocation": root / "state",
        "SlurmdSpoolDir": root / "spool",
        "SlurmctldPidFile": root / "run" / "slurmctld.pid",
        "SlurmdPidFile": root / "run" / "slurmd.pid",
        "SlurmctldLogFile": root / "log" / "slurmctld.log",
        "SlurmdLogFile": root / "log" / "slurmd.log",
        "SlurmctldDebug": "info",
        "SlurmdDebug": "info",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core_Memory",
        # a job that asks for no memory gets its share per CPU, not the whole node
        "DefMemPerCPU": memory // cpus,
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "MpiDefault": "none",
        "SwitchType": "switch/none",
        "ReturnToService": 2,
        "SchedulerType": "sched/backfill",
        "InactiveLimit": 0,
        "KillWait": 5,
        "MinJobAge": 10,
        "SlurmctldTimeout": 30,
        "SlurmdTimeout": 60,
    }
    lines = [f"{key}={value}" for key, value in settings.items()]
    lines.append(
        f"NodeName={hostname} NodeHostname={hostname} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN"
    )
    lines.append(f"PartitionName=debug Nodes={hostname} Default=YES MaxTime=INFINITE State=UP")
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _start_munged(root: Path) -> tuple[subprocess.Popen, Path]:
    munge = root / "munge"
    munge.mkdir(mode=0o755)  # munged wants its socket folder searchable by all
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    sock = munge / "munge.socket"
    cmd = [
        _which("munged"), "--foreground", "--force",
        f"--key-file={key}", f"--socket={sock}", f"--pid-file={munge / 'munged.pid'}",
        f"--log-file={root / 'log' / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}",
    ]  # fmt: skip
    return _spawn(cmd, root / "log" / "munged.out"), sock


def _spawn(cmd: list[str], output: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a daemon in the foreground, its output appended to ``output``.

    With util-linux's ``setpriv`` it gets SIGTERM when the test process dies, even killed
    before the fixture's teardown could stop it.
    """
    setpriv = _which("setpriv")
    if setpriv is not None:
        cmd = [setpriv, "--pdeathsig", "TERM", "--", *cmd]
    with output.open("ab") as out:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _wait_until(ready, node: SlurmNode, what: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
    """Poll ``ready()`` until true; fail at once if a daemon died, or after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not ready():
        dead = [name for name, proc in node.processes.items() if proc.poll() is not None]
        if dead:
            raise SlurmStartError(f"{', '.join(dead)} exited while waiting for {what}\n{node.log_tails()}")
        if time.monotonic() > deadline:
            raise SlurmStartError(f"{what} not reached within {timeout:.0f} s\n{node.log_tails()}")
        time.sleep(0.5)


def start_slurm(root: Path) -> SlurmNode:
    """Start munged, slurmctld and slurmd for a one-node cluster under ``root``.

    Returns once ``sinfo`` shows the node ``idle``. On failure the daemons already started
    are stopped and :class:`SlurmStartError` carries their log tails.
    """
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir(mode=0o755, parents=True, exist_ok=True)
    hostname = socket.gethostname().split(".")[0]
    munged, munge_socket = _start_munged(root)
    conf = write_slurm_conf(root, hostname, munge_socket)
    node = SlurmNode(root=root, conf=conf, hostname=hostname, env={"SLURM_CONF": str(conf)})
    node.processes["munged"] = munged
    env = {**os.environ, **node.env}
    try:
        _wait_until(munge_socket.exists, node, "the munge socket")
        node.processes["slurmctld"] = _spawn(
            [_which("slurmctld"), "-D", "-c", "-f", str(conf)], root / "log" / "slurmctld.out", env
        )
        node.processes["slurmd"] = _spawn(
            [_which("slurmd"), "-D", "-f", str(conf), "-N", hostname], root / "log" / "slurmd.out", env
        )
        _wait_until(lambda: node.node_state() == "idle", node, "an idle node in sinfo")
    except BaseException:
        stop_slurm(node)
        raise
    return node


def _cancel_jobs(node: SlurmNode) -> None:
    if "slurmctld" not in node.processes or node.processes["slurmctld"].poll() is not None:
        return
    node.run("scancel", "--user", str(os.geteuid()), check=False)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        out = node.run("squeue", "-h", "-o", "%i", check=False)
        if out.returncode != 0 or not out.stdout.strip():
            return
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


def stop_slurm(node: SlurmNode) -> None:
    """Cancel the jobs left, then stop the daemons in reverse start order."""
    try:
        _cancel_jobs(node)
    finally:
        for proc in reversed(list(node.processes.values())):
            _stop(proc)
