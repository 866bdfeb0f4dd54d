"""Running a benchmark's paths and reporting what they did, shared by the benchmarks in bench/.

    t = time_paths({"serve": serve, "plain": plain}, args.repeats, alternated, cpu={"replica": read}, rows=len(rows))
    rps = t.rates(len(rows))                      # rows/s of each run, per path
    results.update(medians_of(rps), **runs_of(rps))  # serve_rows_per_s, ..., serve_rows_per_s_runs, ...
    return publish(finish(results, ...), report, args.json)

- `time_paths` runs each path `warmup` times, then times it `repeats` times in the order a policy
  gives (`same_order`, `alternated`, `rotated`, `balanced_order`), reading CPU counters around every
  run; its `Timings` keep each run's wall seconds, CPU seconds and answers.
- `medians_of`, `runs_of`, `ratio_runs` and `matches` turn runs into the JSON's figures (rows/s and
  the like, rounded as every benchmark rounds them; answers compared row by row).
- `timed`, `log`, `machine_info` (and the /proc readers beside them) time a call, print a progress line and
  describe the machine.
- `finish` wraps a benchmark's figures in the setting and machine every one reports, `publish` prints
  the report and writes `--json` (`_common.Setup.publish` does both for a benchmark on a Setup);
  `print_header` and `path_header` / `path_row` are the report's shared lines.

Like bench/_common.py, nothing here imports torch, Ray or byzer_like at module level.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


# -- timing and the machine -------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def proc_cpu_s(pid: int) -> float | None:
    """user + system CPU seconds of a process (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 3)


def spread(xs: list[float]) -> str:
    return f"{min(xs):,.1f}..{max(xs):,.1f}" if len(xs) > 1 else ""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine_info(loadavg_start: str) -> dict[str, Any]:
    """The `machine` entry of a benchmark's JSON (call after torch, Ray and transformers are imported)."""
    import ray
    import torch
    import transformers

    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "transformers": transformers.__version__,
    }




# -- the order of the paths in each repeat -------------------------------------------------------------
def same_order(names: list[str], rep: int) -> list[str]:
    """Every repeat in the order given."""
    return list(names)


def alternated(names: list[str], rep: int) -> list[str]:
    """The order given, then its reverse, and so on."""
    return list(names) if rep % 2 == 0 else names[::-1]


def rotated(names: list[str], rep: int) -> list[str]:
    """The order given, rotated by one more path every repeat."""
    k = rep % len(names)
    return names[k:] + names[:k]


def balanced_order(names: list[str], rep: int) -> list[str]:
    """The rotations of `names`, then those of its reverse, so that over 2 * len(names) repeats every
    path runs in every position and after every other path equally often (a path that always follows
    the same one would inherit its after-effects)."""
    k = len(names)
    base = names if (rep // k) % 2 == 0 else names[::-1]
    return base[rep % k:] + base[: rep % k]


Order = Callable[[list[str], int], list[str]]


# -- timing the paths ------------------------------------------------------------------------------------
@dataclass
class Own:
    """What a path returns when it times its own core (a select without the load before it): its
    answers and those seconds, which `time_paths` records instead of the whole call's."""

    answers: Any
    seconds: float


@dataclass
class Timings:
    """What `time_paths` measured, per path (in the order the paths were given): each run's wall
    seconds (`secs`) and what it returned (`outputs`), each CPU reader's seconds per run
    (`cpu[reader][path]`; a run the reader had no figure for is left out), what `after` said after
    each run (`notes`), and the order of the paths in each repeat (`orders`)."""

    names: list[str]
    secs: dict[str, list[float]] = field(default_factory=dict)
    outputs: dict[str, list[Any]] = field(default_factory=dict)
    cpu: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    notes: dict[str, list[Any]] = field(default_factory=dict)
    orders: list[list[str]] = field(default_factory=list)

    @property
    def answers(self) -> dict[str, Any]:
        """What each path returned on its last run."""
        return {k: v[-1] for k, v in self.outputs.items() if v}

    def rates(self, items: float) -> dict[str, list[float]]:
        """Per path, `items` (rows, tokens) per second of each run."""
        return {k: [items / t for t in v] for k, v in self.secs.items()}

    def cpu_of(self, reader: str, *paths: str) -> dict[str, list[float]]:
        """Reader `reader`'s CPU seconds per run of each of `paths`."""
        return {p: self.cpu[reader][p] for p in paths}


def _read(cpu: dict[str, Callable[[], float | None]]) -> dict[str, float | None]:
    return {name: read() for name, read in cpu.items()}


def time_paths(paths: dict[str, Callable[[], Any]], repeats: int, order: Order = same_order, *,
               warmup: int = 0, cpu: dict[str, Callable[[], float | None]] | None = None,
               before: Callable[[str], Any] | None = None, after: Callable[[str], Any] | None = None,
               rows: int | None = None, label: str = "", log_every: int = 1) -> Timings:
    """Run every path `warmup` times (in the order given), then `repeats` rounds of every path once, in
    the order `order(names, round)` gives. Each run is timed alone (`timed`; a path returning
    `Own` gives its own seconds); the `cpu` readers (name: a function giving CPU seconds, or None) are
    read just before and after it, `before(path)` runs after the first reading and `after(path)` after
    the second (its result kept in `notes`). Logs each `log_every`-th round: rows/s with `rows`, else seconds."""
    names = list(paths)
    cpu = cpu or {}
    t = Timings(names, {k: [] for k in names}, {k: [] for k in names}, {r: {k: [] for k in names} for r in cpu},
                {k: [] for k in names})
    for _ in range(warmup):
        for name in names:
            paths[name]()
    for rep in range(repeats):
        t.orders.append(order(names, rep))
        for name in t.orders[-1]:
            c0 = _read(cpu)
            if before is not None:
                before(name)
            out, secs = timed(paths[name])
            c1 = _read(cpu)
            if isinstance(out, Own):
                out, secs = out.answers, out.seconds
            t.secs[name].append(secs)
            t.outputs[name].append(out)
            for reader, a in c0.items():
                if a is not None and c1[reader] is not None:
                    t.cpu[reader][name].append(c1[reader] - a)
            if after is not None:
                t.notes[name].append(after(name))
        if (rep + 1) % log_every == 0 or rep + 1 == repeats:
            last = {k: t.secs[k][-1] for k in names}
            log(f"{label}repeat {rep + 1}/{repeats} ({' > '.join(t.orders[-1])}): "
                + ", ".join(f"{k} {rows / s:,.1f} rows/s" if rows else f"{k} {s:.3f} s" for k, s in last.items()))
    return t


# -- figures ----------------------------------------------------------------------------------------------
def rounded(xs: list[float], nd: int = 2) -> list[float]:
    return [round(x, nd) for x in xs]


def medians_of(series: dict[str, list[float]], unit: str = "rows_per_s", nd: int = 2) -> dict[str, float]:
    """`{name}_{unit}`: the median of each series, rounded to `nd` places."""
    return {f"{k}_{unit}": round(statistics.median(v), nd) for k, v in series.items()}


def runs_of(series: dict[str, list[float]], unit: str = "rows_per_s", nd: int = 2) -> dict[str, list[float]]:
    """`{name}_{unit}_runs`: each series run by run, rounded to `nd` places."""
    return {f"{k}_{unit}_runs": rounded(v, nd) for k, v in series.items()}


def ratio_runs(a: list[float], b: list[float]) -> list[float]:
    """a / b run by run (the paths of one repeat paired), to 3 places."""
    return [round(x / y, 3) for x, y in zip(a, b)]


def matches(a: list[Any], b: list[Any]) -> tuple[int, list[int]]:
    """How many rows' answers are equal in `a` and `b`, and the first 20 rows where they are not."""
    bad = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return min(len(a), len(b)) - len(bad), bad[:20]


# -- the JSON and the report ----------------------------------------------------------------------------
def utc_now() -> str:
    """The `timestamp` of a benchmark's JSON: now, UTC, to the second."""
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def finish(results: dict[str, Any], *, rows: int, max_new_tokens: int, size: str, params: int, replicas: int,
           cpus_per_worker: float, max_batch_size: int, torch_threads: int, repeats: int,
           load_start: str) -> dict[str, Any]:
    """The figures every benchmark reports, around its own `results`."""
    import os

    return {
        "rows": rows,
        "max_new_tokens": max_new_tokens,
        "model": {"family": "llama", "size": size, "params": params},
        "params": params,
        "replicas": replicas,
        "cpus_per_worker": cpus_per_worker,
        "max_batch_size": max_batch_size,
        "torch_threads": torch_threads,
        "repeats": repeats,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        **results,
        "machine": machine_info(load_start),
        "timestamp": utc_now(),
    }


def write_json(path: str | None, results: dict[str, Any]) -> None:
    import json

    if path:
        Path(path).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {path}")


def publish(results: dict[str, Any], report: Callable[[dict[str, Any]], Any], json_path: str | None) -> int:
    """The end of a benchmark's run: print `report(results)`, write the JSON to `json_path` (--json); 0."""
    report(results)
    write_json(json_path, results)
    return 0


def print_machine(r: dict[str, Any]) -> None:
    """The OMP policy, load average and machine lines of a report."""
    m = r["machine"]
    print(f"OMP_WAIT_POLICY={r['omp_wait_policy'] or '(unset)'}; load average (1/5/15 min) at start {m['loadavg_start']}, "
          f"at end {m['loadavg_end']}")
    print(f"{m['cores']} cores ({m['cpu_model']}), python {m['python']}, torch {m['torch']}, ray {m['ray']}, "
          f"transformers {m['transformers']}")


def print_header(r: dict[str, Any], *, orders: bool = False) -> None:
    """The run's setting and machine, the first lines of every benchmark's report (`orders`: and the
    order of the paths in each repeat, `r["orders"]`)."""
    print()
    print(f"llama {r['model']['size']} ({r['params']:,} params), {r['rows']} rows, max_new_tokens={r['max_new_tokens']}, "
          f"greedy, batch {r['max_batch_size']}, {r['torch_threads']} torch threads, median of {r['repeats']} runs")
    print_machine(r)
    if orders:
        print(f"order of the paths per repeat: {' | '.join(' > '.join(o) for o in r['orders'])}")


def cpu_cell(xs: list[float], width: int) -> str:
    """The median CPU seconds per run, 2 places, right-aligned in `width` ("n/a" without runs)."""
    return f"{statistics.median(xs):.2f}".rjust(width) if xs else "n/a".rjust(width)


def path_header(width: int, *cells: tuple[str, int]) -> str:
    """The head of a table of paths (`path`, `rows/s`, `runs (min..max)`, then `cells`: (name, width))."""
    return f"{'path':<{width}} {'rows/s':>10} {'runs (min..max)':>20}" + "".join(f" {c:>{w}}" for c, w in cells)


def path_rule(width: int, *cells: tuple[str, int]) -> str:
    """The rule under `path_header`'s line."""
    return "-" * (width + 33 + sum(w + 1 for _, w in cells))


def path_row(label: str, width: int, rate: float, runs: list[float], *cells: str) -> str:
    """One path of the table: its label, median rows/s, the runs' min..max, then `cells` as given."""
    return f"{label:<{width}} {rate:>10,.1f} {spread(runs):>20}" + "".join(f" {c}" for c in cells)
