#!/usr/bin/env python3
"""CLI latency: how long `byzer-like list` takes on an idle persistent head, next to Python's and Ray's own start-up.

    .venv/bin/python bench/cli_latency.py [--runs 7] [--no-deployment] [--json OUT]

What one run does:

1. Makes a temporary workspace and starts its persistent head (`byzer-like cluster start`); nothing is
   deployed, so `list` measures the command itself (start-up, joining the head, asking it whether Serve
   runs, disconnecting).
2. Runs every command below once to warm the disk cache, then `--runs` rounds; each round runs every
   command once as a subprocess, in an order rotated every round so that load from elsewhere hits all
   alike, and times it from spawn to exit (wall clock):
     pass         `python -c pass`: the interpreter's start-up, the floor of any command
     import_ray   `python -c "import ray"`: what every command that talks to a cluster pays before it can
     help         `byzer-like --help`
     models_list  `byzer-like models list`: the model registry (the workspace's catalog, no cluster)
     jobs_list    `byzer-like jobs list`: the training jobs (catalog; Ray only for jobs still running)
     list         `byzer-like list`: join the idle head, find no Serve, disconnect
3. Unless `--no-deployment`: builds a tiny llama (`models make-tiny`), deploys it on one replica, and
   times `--runs` more runs of `list` (`list_deployed`): with Serve running, `list` imports Ray Serve's
   client (fastapi, pandas, ...) and asks its controller, which is the everyday case.
4. Stops the head and removes the workspace.

Reading the output: medians (and min..max) in seconds per command, and the ratios list / pass and
list / import_ray. The issue "Everyday use without surprises" asks for `list` under 2 s on this machine
(the goal is checked on the idle head's `list`); `import_ray` and `pass` show how much of it is start-up
nobody can cut. The machine is small and shared, so the absolute figures move with its load (printed
at the start and end); compare within one run.

`--json OUT` writes the per-run times, medians, ratios, machine and timestamp to OUT.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from _common import parser
from _report import cpu_model, loadavg, log, utc_now, write_json

CLI = str(Path(sys.executable).with_name("byzer-like"))
GOAL_S = 2.0


def commands(ws: Path) -> dict[str, list[str]]:
    w = ["--workspace", str(ws)]
    return {
        "pass": [sys.executable, "-c", "pass"],
        "import_ray": [sys.executable, "-c", "import ray"],
        "help": [CLI, "--help"],
        "models_list": [CLI, "models", "list", *w],
        "jobs_list": [CLI, "jobs", "list", *w],
        "list": [CLI, "list", *w],
    }


def shown(argv: list[str]) -> str:
    """A command as a user would type it (no interpreter path, no temporary workspace)."""
    names = {sys.executable: "python", CLI: "byzer-like"}
    words = [names.get(a, a) for a in argv]
    if "--workspace" in words:
        words = words[:words.index("--workspace")]
    return " ".join(w if " " not in w else repr(w) for w in words)


def time_once(argv: list[str]) -> float:
    start = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {out.returncode}: {out.stderr.strip()[-400:]}")
    return took


def main(argv: list[str] | None = None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--runs", type=int, default=7, help="timed runs of each command (default 7)")
    ap.add_argument("--no-deployment", action="store_true", help="skip `list` with a model deployed")
    ap.add_argument("--json", metavar="OUT", help="write the figures as JSON to OUT")
    args = ap.parse_args(argv)
    load_start = loadavg()
    ws = Path(tempfile.mkdtemp(prefix="byzer-like-cli-"))
    env_ws = ["--workspace", str(ws)]
    try:
        log(f"starting a persistent head for {ws}")
        subprocess.run([CLI, "cluster", "start", *env_ws], check=True, capture_output=True, timeout=180)
        cmds = commands(ws)
        for argv_ in cmds.values():  # warm the disk cache
            time_once(argv_)
        runs: dict[str, list[float]] = {name: [] for name in cmds}
        names = list(cmds)
        for r in range(args.runs):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                runs[name].append(time_once(cmds[name]))
            log(f"round {r + 1}/{args.runs}: list {runs['list'][-1]:.2f} s")
        if not args.no_deployment:
            log("deploying a tiny llama on one replica")
            for step in (["models", "make-tiny", "--family", "llama", "--out", str(ws / "m")],
                         ["deploy", str(ws / "m"), "--type", "llama", "--name", "bench_list", "--num-workers", "1",
                          "--cpus-per-worker", "1"]):
                subprocess.run([CLI, *step, *env_ws], check=True, capture_output=True, timeout=600)
            cmds["list_deployed"] = cmds["list"]
            time_once(cmds["list"])
            runs["list_deployed"] = [time_once(cmds["list"]) for _ in range(args.runs)]
    finally:
        subprocess.run([CLI, "cluster", "stop", *env_ws], capture_output=True, timeout=120)
        shutil.rmtree(ws, ignore_errors=True)
    med = {name: round(statistics.median(xs), 3) for name, xs in runs.items()}
    results = {
        "runs": args.runs,
        "seconds": {name: [round(x, 3) for x in xs] for name, xs in runs.items()},
        "median_s": med,
        "list_over_pass": round(med["list"] / med["pass"], 1),
        "list_over_import_ray": round(med["list"] / med["import_ray"], 2),
        "list_goal_s": GOAL_S,
        "list_meets_goal": med["list"] < GOAL_S,
        "machine": {"cores": os.cpu_count(), "cpu_model": cpu_model(), "loadavg_start": load_start,
                    "loadavg_end": loadavg(), "python": sys.version.split()[0], "ray": metadata.version("ray")},
        "timestamp": utc_now(),
    }
    write_json(args.json, results)
    m = results["machine"]
    print()
    print(f"median of {args.runs} runs, each command a fresh process; load average (1/5/15 min) at start "
          f"{m['loadavg_start']}, at end {m['loadavg_end']}; {m['cores']} cores ({m['cpu_model']}), "
          f"python {m['python']}, ray {m['ray']}")
    for name, xs in runs.items():
        print(f"  {name:14s} {med[name]:6.2f} s   ({min(xs):.2f}..{max(xs):.2f})   {shown(cmds[name])}")
    print(f"list / pass {results['list_over_pass']}x; list / import ray {results['list_over_import_ray']}x; "
          f"list {'meets' if results['list_meets_goal'] else 'misses'} the {GOAL_S:g} s goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
