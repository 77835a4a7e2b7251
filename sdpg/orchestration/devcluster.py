"""A real single-node SLURM cluster on this machine, for tests and first tries.

    python -m sdpg.orchestration.devcluster start      # installs Debian's slurmctld/slurmd if missing, starts them
    eval $(python -m sdpg.orchestration.devcluster env)  # SLURM_CONF for sbatch/squeue/submitit in this shell
    python -m sdpg.orchestration.devcluster stop

No systemd, no munge (``AuthType=auth/none``), everything under one folder (``$SDPG_SLURM_DIR``,
default ``/tmp/sdpg-slurm``). ``CPUs`` is declared larger than the machine's count so several small
jobs run side by side. Needs root for the install and for running the daemons as SlurmUser=root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from sdpg import fsio

PACKAGES = ["slurmctld", "slurmd", "slurm-client"]


def base_dir() -> Path:
    return Path(os.environ.get("SDPG_SLURM_DIR", "/tmp/sdpg-slurm"))


def conf_path() -> Path:
    return base_dir() / "slurm.conf"


def installed() -> bool:
    return all(shutil.which(x) for x in ("slurmctld", "slurmd", "sbatch", "squeue"))


def install() -> None:
    if installed():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], check=True, env=env, stdout=subprocess.DEVNULL
    )


def write_conf(cpus: int = 8, mem_mb: int = 16000) -> Path:
    b = base_dir()
    for sub in ("state", "spool", "log", "run"):
        fsio.ensure_dir(b / sub)
    conf = f"""ClusterName=sdpgdev
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
SchedulerParameters=sched_interval=1,bf_interval=1
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/run/slurmctld.pid
SlurmdPidFile={b}/run/slurmd.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
    fsio.write_text(conf_path(), conf, redact=False)
    return conf_path()


def _pid(name: str) -> int | None:
    p = base_dir() / "run" / f"{name}.pid"
    try:
        pid = int(p.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return None
    return None if state == "Z" else pid


def env() -> dict[str, str]:
    return {"SLURM_CONF": str(conf_path())}


def running() -> bool:
    return _pid("slurmctld") is not None and _pid("slurmd") is not None


def start(cpus: int = 8, timeout_s: float = 30.0) -> dict[str, str]:
    """Install if needed, write the config, start both daemons, wait until the node is idle."""
    install()
    if running():
        return env()
    write_conf(cpus)
    e = {**os.environ, **env()}
    subprocess.run(["slurmctld", "-c", "-f", str(conf_path())], check=True, env=e)
    subprocess.run(["slurmd", "-N", "localhost", "-f", str(conf_path())], check=True, env=e)
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=e)
        if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
            return env()
        time.sleep(0.2)
    raise RuntimeError(f"the dev cluster did not come up in {timeout_s}s; see {base_dir() / 'log'}")


def stop() -> None:
    """Cancel every job, then stop the daemons (slurmstepd outlives slurmd otherwise)."""
    e = {**os.environ, **env()}
    if running():
        subprocess.run(["scancel", "--user=root"], env=e, capture_output=True)
        t0 = time.time()
        while time.time() - t0 < 15:
            q = subprocess.run(["squeue", "-h"], env=e, capture_output=True, text=True)
            if q.returncode != 0 or not q.stdout.strip():
                break
            time.sleep(0.3)
    for name in ("slurmd", "slurmctld"):
        pid = _pid(name)
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    t0 = time.time()
    while time.time() - t0 < 10 and (_pid("slurmd") or _pid("slurmctld")):
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cmd = argv[0] if argv else "status"
    if cmd == "start":
        start()
        print(f"dev cluster up; export SLURM_CONF={conf_path()}", file=sys.stderr)
    elif cmd == "stop":
        stop()
    elif cmd == "env":
        print(f"export SLURM_CONF={conf_path()}")
    elif cmd == "status":
        print("running" if running() else "stopped")
    else:
        print("usage: python -m sdpg.orchestration.devcluster start|stop|env|status", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
