"""Figure 9: ``make up`` with the Kubernetes binaries cached, and its idempotent rerun.

Full runs use the main cluster in ~/.wasmlet: ``make down`` (stops everything ``make up``
started, keeps the state and the binaries), then ``make up`` twice, each timed. The first run
starts etcd, the apiserver, the controller-manager, the scheduler, the registry and the node
again and runs the demo; the second finds everything in place. ``make venv`` runs first, untimed,
so that a changed pyproject.toml does not make the first run reinstall the virtualenv.

Smoke runs do not touch the cluster: they check that ``make -n up`` and the playbook's task
list work.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench.common import BIN, ROOT, BenchError, Context, Figure, Outcome, kubernetes_version
from wasmlet import paths

MAKE_TIMEOUT = 1800.0


def _make(target: str, log: Path, timeout: float = MAKE_TIMEOUT) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "MFLAGS"}
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.run(
            ["make", target],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=timeout,
        )
    took = time.monotonic() - started
    if proc.returncode != 0:
        raise BenchError(
            f"make {target} failed ({proc.returncode}): {log.read_text(errors='replace')[-3000:]}"
        )
    return took


def _changed(log: Path) -> str:
    """The PLAY RECAP line(s) of a make up log: how much the run changed."""
    lines = log.read_text(errors="replace").splitlines()
    return "; ".join(
        line.split(":", 1)[1].strip() for line in lines if line.startswith("localhost") and "ok=" in line
    )


def _smoke(out: Outcome, ctx: Context) -> Outcome:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE") and k != "MFLAGS"}
    dry = subprocess.run(["make", "-n", "up"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if dry.returncode != 0 or "site.yml" not in dry.stdout:
        raise BenchError(f"make -n up: {dry.returncode} {dry.stdout[-500:]} {dry.stderr[-500:]}")
    listing = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "inventories/local", "site.yml", "--list-tasks"],
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if listing.returncode != 0:
        raise BenchError(f"site.yml --list-tasks: {listing.stdout[-1000:]} {listing.stderr[-1000:]}")
    out.not_measured.append("smoke run: make up is not run (it restarts the main cluster)")
    ctx.log("make_up: smoke: make -n up and site.yml --list-tasks work")
    return out


def run(ctx: Context) -> Outcome:
    out = Outcome("make_up")
    if ctx.smoke:
        return _smoke(out, ctx)
    binaries = paths.bin_dir(kubernetes_version())
    cached = sorted(p.name for p in binaries.iterdir()) if binaries.is_dir() else []
    if len(cached) < 5:
        raise BenchError(f"the Kubernetes binaries are not cached in {binaries} ({cached})")
    _make("venv", ctx.workdir / "make-venv.log")
    ctx.quiet()
    down = _make("down", ctx.workdir / "make-down.log")
    ctx.quiet()
    first_log, second_log = ctx.workdir / "make-up-1.log", ctx.workdir / "make-up-2.log"
    first = _make("up", first_log)
    ctx.quiet()
    second = _make("up", second_log)
    out.data = {
        "binaries_cached": {"dir": str(binaries), "files": cached},
        "make_down_s": round(down, 1),
        "make_up_s": round(first, 1),
        "make_up_rerun_s": round(second, 1),
        "recap_first": _changed(first_log),
        "recap_rerun": _changed(second_log),
    }
    out.add(
        Figure(
            "10a",
            "make up, binaries cached (after make down: state kept, everything stopped)",
            round(first, 1),
            "s",
            300,
            "<=",
            f"PLAY RECAP: {out.data['recap_first']}",
        )
    )
    out.add(
        Figure(
            "10b",
            "make up again (idempotent rerun)",
            round(second, 1),
            "s",
            90,
            "<=",
            f"PLAY RECAP: {out.data['recap_rerun']}",
        )
    )
    out.not_measured.append(
        "make up from an empty ~/.wasmlet with only the binaries cached (PKI, etcd data, registry and node "
        "state purged) was not run: it would wipe the shared cluster other work on this machine uses"
    )
    return out
