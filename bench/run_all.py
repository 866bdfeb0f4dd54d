#!/usr/bin/env python3
"""Run every benchmark of bench/, one after the other, and write bench/RESULTS.md and bench/results.json.

    .venv/bin/python bench/run_all.py [--quick] [--only NAME[,NAME...]] [--timeout S]
                                      [--out-md bench/RESULTS.md] [--out-json bench/results.json]

Run it from anywhere (benchmarks run with the repository root as their working directory). Each
benchmark runs in its own subprocess (`python -u bench/<name>.py ... --json <temp file>`), which
starts and stops its own embedded Ray cluster; they never run in parallel (they would share the
cores they measure). Their output streams to this console as it comes.

    name            command (full run)                         --quick (a smoke test: small sizes)
    inference       bench/inference.py --replicas 2            --rows 64 --repeats 1 --overhead-calls 5
    sql_inference   bench/sql_inference.py                     --rows 64 --repeats 1
    train           bench/train.py --repeats 2                 --rows 48 --epochs 1 --size tiny --repeats 1
    train_dpo       bench/train.py --task dpo --rows 200       --task dpo --rows 48 --epochs 1 --size tiny
                    --epochs 1 --repeats 4                     --repeats 1
    http_api        bench/http_api.py                          --calls 5 --stream-calls 5
    batching        bench/batching.py                          --rows 64 --repeats 1
    eval            bench/eval.py                              --rows 64 --repeats 1
    adapters        bench/adapters.py                          --model small --rows 24 --repeats 1

`--only` takes names (or prefixes: `sql`, `http`), comma-separated or repeated. A benchmark that
fails (non-zero exit, timeout, no JSON) does not stop the others: its rows in RESULTS.md say so, with
the last lines of its stderr, and run_all exits with status 1 at the end. RESULTS.md holds the
machine (CPU, cores, memory, Python / torch / Ray / transformers versions, load average before and
after, date, git commit), one table of the headline ratios with their raw figures and the command
that produced each, a note on how to read them, and every benchmark's full JSON (collapsed);
results.json holds the same JSON. `--only` still rewrites both files (benchmarks not run are marked
so); use `--out-md` / `--out-json` to write elsewhere.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
import _common  # noqa: E402  (imports nothing heavy)

STDERR_TAIL_LINES = 25


@dataclass
class Bench:
    name: str
    script: str
    full: list[str]
    quick: list[str]


BENCHMARKS = [
    Bench("inference", "inference.py", ["--replicas", "2"],
          ["--replicas", "2", "--rows", "64", "--repeats", "1", "--overhead-calls", "5"]),
    Bench("sql_inference", "sql_inference.py", [], ["--rows", "64", "--repeats", "1"]),
    Bench("train", "train.py", ["--repeats", "2"], ["--rows", "48", "--epochs", "1", "--size", "tiny", "--repeats", "1"]),
    Bench("train_dpo", "train.py", ["--task", "dpo", "--rows", "200", "--epochs", "1", "--repeats", "4"],
          ["--task", "dpo", "--rows", "48", "--epochs", "1", "--size", "tiny", "--repeats", "1"]),
    Bench("http_api", "http_api.py", [], ["--calls", "5", "--stream-calls", "5"]),
    Bench("batching", "batching.py", [], ["--rows", "64", "--repeats", "1"]),
    Bench("eval", "eval.py", [], ["--rows", "64", "--repeats", "1"]),
    Bench("adapters", "adapters.py", [], ["--model", "small", "--rows", "24", "--repeats", "1"]),
]
BY_NAME = {b.name: b for b in BENCHMARKS}


@dataclass
class Outcome:
    bench: Bench
    command: str
    status: str = "not run"  # ok | failed | not run
    returncode: int | None = None
    seconds: float | None = None
    results: dict | None = None
    error: str | None = None
    stderr_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# -- running one benchmark ------------------------------------------------------------------------------
def python_shown() -> str:
    """The interpreter as a command line would name it (`.venv/bin/python` when it is the repo's venv)."""
    try:
        return str(Path(sys.executable).relative_to(ROOT))
    except ValueError:
        return sys.executable


def command_of(b: Bench, quick: bool) -> list[str]:
    return [f"bench/{b.script}", *(b.quick if quick else b.full)]


def _pump(src: Any, dst: Any, keep: bytearray | None, limit: int = 64 * 1024) -> None:
    """Copy a pipe to a console stream as bytes arrive (progress bars and all); keep its tail."""
    fd = src.fileno()
    while True:
        chunk = os.read(fd, 8192)
        if not chunk:
            break
        dst.write(chunk)
        dst.flush()
        if keep is not None:
            keep.extend(chunk)
            if len(keep) > limit:
                del keep[: len(keep) - limit]


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the benchmark: SIGTERM to it alone (it then stops its embedded cluster and removes its
    workspace), and after 60 s, or once it has gone, SIGKILL to whatever is left of its process
    group (the session it was started in: the cluster's processes)."""
    try:
        proc.terminate()
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def run_one(b: Bench, quick: bool, timeout_s: float, tmp: Path) -> Outcome:
    out_json = tmp / f"{b.name}.json"
    argv = [sys.executable, "-u", *command_of(b, quick), "--json", str(out_json)]
    shown = " ".join([python_shown(), *map(shlex.quote, command_of(b, quick))])
    outcome = Outcome(b, shown)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    banner = f"=== {b.name}: {shown}  (started {time.strftime('%H:%M:%S')}, load {_common.loadavg()})"
    print(f"\n{banner}\n", flush=True)
    err_tail = bytearray()
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, sys.stdout.buffer, None), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, sys.stderr.buffer, err_tail), daemon=True)]
    for t in pumps:
        t.start()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        outcome.error = f"timed out after {timeout_s:g} s"
        _kill_group(proc)
    except BaseException:  # Ctrl-C: do not leave the benchmark and its cluster running
        _kill_group(proc)
        raise
    for t in pumps:
        t.join(timeout=10)
    outcome.seconds = round(time.perf_counter() - start, 1)
    outcome.returncode = proc.returncode
    outcome.stderr_tail = err_tail.decode(errors="replace").replace("\r", "\n").splitlines()
    outcome.stderr_tail = [line for line in outcome.stderr_tail if line.strip()][-STDERR_TAIL_LINES:]
    if out_json.is_file():
        try:
            outcome.results = json.loads(out_json.read_text(encoding="utf-8"))
        except ValueError as e:
            outcome.error = outcome.error or f"its JSON is not valid: {e}"
    if outcome.error is None and proc.returncode != 0:
        outcome.error = f"exit status {proc.returncode}"
    if outcome.error is None and outcome.results is None:
        outcome.error = "it wrote no JSON"
    outcome.status = "failed" if outcome.error else "ok"
    print(f"\n=== {b.name}: {outcome.status}"
          + (f" ({outcome.error})" if outcome.error else "") + f" in {outcome.seconds:.0f} s\n", flush=True)
    return outcome


# -- the machine -----------------------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _memory() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict[str, Any]:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu_model": _common.cpu_model(),
        "cores": os.cpu_count(),
        "memory": _memory(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "ray": _version("ray"),
        "transformers": _version("transformers"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_subject": _git("log", "-1", "--format=%s"),
        "git_uncommitted_files": None if status is None else len(status.splitlines()),
    }


# -- the report --------------------------------------------------------------------------------------------
def _num(x: Any, nd: int = 1, unit: str = "") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (int, float)):
        return f"{x:,.{nd}f}{unit}"
    return str(x)


def _get(r: dict | None, *keys: str) -> Any:
    cur: Any = r
    for k in keys:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(k)
    return cur


def _matches(n: Any, total: Any) -> str:
    return f"{n}/{total}" if n is not None else "n/a"


class Figures(string.Formatter):
    """Fills a row's template from one benchmark's JSON `r`. A field names a figure: `key`, or `key.sub`
    for one inside an object (None where missing); its format says how to show it:

        (none)      as `str` writes it (None where missing)
        s, g        the figure must be there: as `str` writes it, as `:g` does (`2.0` is `2`)
        n<d>[unit]  a number with d places and thousands commas, then `unit` (`n1 ms`); n/a where missing
        /rows       a count out of the rows, `n/rows` (the JSON must have `rows`); n/a where missing
        /rows?      the same, out of 0 where the JSON has no `rows`
        yes, equal  `yes` or `NO`, `equal` or `NOT equal`, by the figure's truth
        keys        an object's names, comma-separated
        runs2       a list of figures each rounded to 2 places
    """

    def __init__(self, r: dict):
        super().__init__()
        self.r = r

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Any) -> tuple[str, str]:
        return field_name, field_name  # the figure is looked up by `format_field`, which knows its format

    def format_field(self, key: str, spec: str) -> str:
        r = self.r
        if spec == "s":
            return str(r[key])
        if spec == "g":
            return format(r[key], "g")
        value = _get(r, *key.split("."))
        if spec.startswith("n") and spec[1:2].isdigit():
            return _num(value, int(spec[1]), spec[2:])
        shown: dict[str, Callable[[], str]] = {
            "": lambda: str(value),
            "/rows": lambda: _matches(value, r["rows"]),
            "/rows?": lambda: _matches(value, r.get("rows", 0)),
            "yes": lambda: "yes" if value else "NO",
            "equal": lambda: "equal" if value else "NOT equal",
            "keys": lambda: ", ".join(value or {}),
            "runs2": lambda: str(None if value is None else [round(x, 2) for x in value]),
        }
        if spec not in shown:
            raise ValueError(f"{{{key}:{spec}}}: no such figure format (see Figures)")
        return shown[spec]()


def fill(parts: Sequence[str | tuple[str, str]], r: dict) -> str:
    """The parts of a template filled from `r` (`Figures`) and joined; a part (key, template) only where
    the figure `key` is not None."""
    return "".join(Figures(r).format(p if isinstance(p, str) else p[1]) for p in parts
                   if isinstance(p, str) or r.get(p[0]) is not None)


@dataclass
class Row:
    """One row of the headline table: what it shows, the benchmark whose JSON it reads, and the
    templates (`fill`) of its result and raw-figure cells."""

    figure: str
    bench: str
    result: str
    raw: tuple[str | tuple[str, str], ...]

    def cells(self, r: dict) -> tuple[str, str]:
        return fill((self.result,), r), fill(self.raw, r)


ROWS = [
    Row("SQL `select m(llm_param(...))` vs a plain `transformers` loop", "sql_inference", "**{ratio_sql_plain:n2}**",
        ("SQL {sql_rows_per_s:n1} vs plain {plain_rows_per_s:n1} rows/s ({rows:s} rows); SQL / `batch_chat` "
         "{ratio_sql_batch_chat:n3}; per run {ratio_sql_plain_runs}; answers SQL == plain "
         "{answers_match_sql_plain:/rows}",)),
    Row("`batch_chat` through Serve (1 replica) vs the plain loop", "inference", "**{ratio:n2}**",
        ("Serve {serve_rows_per_s:n1} vs plain {plain_rows_per_s:n1} rows/s ({rows:s} rows, 1 replica x "
         "{cpus_per_worker:g} CPU); one chunk in flight: {ratio_seq:n3}; per run {ratio_runs}; answers "
         "{answers_match:/rows}",)),
    Row("Serve overhead per request (one token, `chat_oai` - in-process call)", "inference", "**{overhead_ms_diff:n1 ms}**",
        ("one-token `chat_oai` {overhead_ms_serve:n2} ms vs in-process plugin call {overhead_ms_direct:n2} ms "
         "(medians); replica `generate` without the chat batcher {overhead_ms_serve_generate:n2} ms",)),
    Row("HTTP API overhead over the Serve handle (one token, keep-alive `http.client`)", "http_api",
        "**{overhead_ms_http_handle:n1 ms}**",
        ("one token: HTTP {latency_ms.http.median:n2} vs handle {latency_ms.handle.median:n2} vs direct "
         "{latency_ms.direct.median:n2} ms (medians of {calls}); handle - direct {overhead_ms_handle_direct:n2} ms",
         ("overhead_ms_openai_http", "; the `openai` client adds {overhead_ms_openai_http:n2} ms"))),
    Row("streamed time to first token over HTTP", "http_api", "**{ttft_ms.http.median:n1 ms}**",
        ("{stream_tokens}-token answer: HTTP {ttft_ms.http.median:n2} vs handle {ttft_ms.handle.median:n2} vs direct "
         "{ttft_ms.direct.median:n2} ms (medians of {stream_calls}); HTTP - handle {ttft_overhead_ms_http_handle:n2} ms",)),
    Row("LoRA fine-tuning as a job vs a plain `Trainer` + peft script (training tokens/s)", "train",
        "**{ratio_job_plain_train:n2}**",
        ("training {job_train_tokens_per_s:n0} vs {plain_train_tokens_per_s:n0} tokens/s; end to end (job start "
         "included) {ratio_job_plain_end_to_end:n3}; llama {model.size}, {rows} rows, {epochs} epoch(s), {cpus} CPUs, "
         "median of {repeats}",)),
    Row("DPO with LoRA as a job vs a plain TRL `DPOTrainer` + peft script (training tokens/s)", "train_dpo",
        "**{ratio_job_plain_train:n2}**",
        ("training {job_train_tokens_per_s:n0} vs {plain_train_tokens_per_s:n0} tokens/s; end to end (job start "
         "included) {ratio_job_plain_end_to_end:n3}; llama {model.size}, {rows} pairs, {epochs} epoch(s), {cpus} CPUs, "
         "median of {repeats}",)),
    Row("2 replicas vs 1 replica, same total CPUs (`batch_chat` rows/s)", "inference", "**{ratio_2_vs_1:n2}**",
        ("2 x {cpus_per_worker_2:n0} CPU {serve_2_rows_per_s:n1} vs 1 x {cpus_per_worker:g} CPU {serve_rows_per_s:n1} "
         "rows/s; answers {answers_match_2:/rows}",)),
    Row("batch-32 vs batch-1 throughput through Serve (`max_batch_size`)", "batching", "**{ratio:n2}**",
        ("{serve_b32_rows_per_s:n1} vs {serve_b1_rows_per_s:n1} rows/s ({rows:s} rows, `max_batch_size` {batch_size} vs 1)",
         ("ratio_plain", "; plain loop: {plain_b32_rows_per_s:n1} vs {plain_b1_rows_per_s:n1} rows/s, {ratio_plain:n2}x"),
         "; batch-1 forward passes all 1-row: {one_row_forward_passes:yes}; answers equal {answers_match:/rows}")),
    Row("`action=\"eval\"` vs a plain loop of `generate` + metric functions (rows/s)", "eval", "**{ratio:n2}**",
        ("eval {eval_rows_per_s:n1} vs plain {plain_rows_per_s:n1} rows/s ({rows:s} rows, {metrics:keys}, 1 replica x "
         "{cpus_per_worker:g} CPU); without the report (`report=\"false\"`) {ratio_no_report:n2}; per run eval "
         "{per_run_s.eval:runs2} s, plain {per_run_s.plain:runs2} s; predictions and metrics equal: "
         "{answers_and_metrics_agree:yes}",)),
    Row("N LoRA adapters on one base vs N deployments (resident memory, N deployments / one base)", "adapters",
        "**{memory_ratio:n2}**",
        ("RSS {shared_rss_mb:n0} MiB (1 replica, {adapters} adapters loaded) vs {separate_rss_mb:n0} MiB ({adapters} "
         "replicas); rows/s {shared_rows_per_s:n2} (one select) vs {separate_rows_per_s:n2} ({adapters} selects), "
         "{throughput_ratio:n2}x; {model}, {rows} rows; answers equal {answers_match:/rows?}",)),
]
# the last row: each benchmark's answers against its baseline's, where it ran
ANSWERS = [
    ("inference", "Serve {answers_match:/rows}"),
    ("sql_inference", "SQL {answers_match_sql_plain:/rows}"),
    ("batching", "batch-1 vs batch-32 {answers_match:/rows}"),
    ("eval", "eval / plain {answers_and_metrics_agree:equal}"),
    ("adapters", "one base + adapters vs merged deployments {answers_match:/rows}"),
    ("http_api", "HTTP / handle / direct {answers_match:equal}"),
]


def answers_result(results: dict[str, dict]) -> str:
    """The answers-equal cell: `ANSWERS` of every benchmark that ran, joined."""
    return "; ".join(Figures(results[b]).format(t) for b, t in ANSWERS if results.get(b)) or "n/a"


def _key_line(lines: list[str]) -> str:
    """The stderr line that says most: the last one naming an error, else the last one."""
    for line in reversed(lines):
        if re.search(r"Error\b|Exception\b|Traceback|error:|FAILED|Killed", line):
            return line.strip()
    return lines[-1].strip() if lines else ""


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3].rstrip() + "..."


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render_md(outcomes: list[Outcome], mach: dict, load_before: str, load_after: str, started: str,
              total_s: float, quick: bool, json_name: str) -> str:
    by = {o.bench.name: o for o in outcomes}
    results = {n: o.results for n, o in by.items() if o.ok}
    L: list[str] = []
    L.append("# Benchmark results")
    L.append("")
    L.append(f"Written by `bench/run_all.py{' --quick' if quick else ''}` on {started} "
             f"({total_s / 60:.1f} min in all).")
    if quick:
        L.append("")
        L.append("> **Quick run** (`--quick`: small sizes, one repeat): a smoke test that every benchmark works. "
                 "Its figures are too small and too noisy to compare; run `bench/run_all.py` without `--quick` for those.")
    L.append("")
    commit = mach.get("git_commit") or "unknown"
    dirty = mach.get("git_uncommitted_files")
    L.append("| machine | |")
    L.append("| --- | --- |")
    L.append(f"| CPU | {mach['cpu_model']}, {mach['cores']} cores (no GPU used) |")
    L.append(f"| memory | {mach['memory']} |")
    L.append(f"| software | {mach['os']}, Python {mach['python']}, torch {mach['torch']}, Ray {mach['ray']}, "
             f"transformers {mach['transformers']} |")
    L.append(f"| load average (1/5/15 min) | before {load_before}, after {load_after} |")
    L.append(f"| date | {started} |")
    L.append(f"| git commit | `{commit[:12]}` ({_cell(_short(mach.get('git_subject') or '', 100))})"
             + (f" (+ uncommitted changes in {dirty} tracked file(s))" if dirty else "") + " |")
    L.append("")
    L.append("## Headline figures")
    L.append("")
    L.append("| figure | result | raw figures | produced by |")
    L.append("| --- | --- | --- | --- |")
    for row in ROWS:
        o = by.get(row.bench)
        src = f"`{o.command}`" if o else f"bench/{BY_NAME[row.bench].script}"
        if o is None or o.status == "not run":
            result, raw = "not run", "not run in this invocation (`--only`)"
        elif not o.ok:
            last = _key_line(o.stderr_tail)
            result = "**failed**"
            raw = f"{o.error}: `{_cell(_short(last, 300))}` (the last lines of its stderr are under Failures)"
        else:
            try:
                result, raw = row.cells(o.results)
            except Exception as e:  # noqa: BLE001 - a missing key must not lose the whole report
                result, raw = "n/a", f"could not read the figure from the JSON: {type(e).__name__}: {e}"
        L.append(f"| {_cell(row.figure)} | {_cell(result)} | {_cell(raw)} | {_cell(src)} |")
    L.append(f"| answers equal across paths (greedy decoding) | {_cell(answers_result(results))} | "
             f"rows matching the baseline's answers | all of the above |")
    L.append("")
    L.append("## How to read this")
    L.append("")
    L.append(
        "Every ratio compares two paths measured in the same benchmark run, on the same rows and the same "
        "random-init tiny llama (greedy decoding, 32 new tokens, batches of 32 unless the row says otherwise), "
        "with the paths alternated so that load from elsewhere hits both alike; each benchmark also checks that the "
        "paths give the same answers. Throughput ratios above 1 favour the first path named (byzer-like's): "
        "the goals are SQL and `batch_chat` vs the plain loop >= 0.9 and the LoRA job vs plain `Trainer` >= 0.95. "
        "`batch_chat` can beat the plain loop because the client keeps two chunks per replica in flight, so two "
        "`generate` calls overlap on a tiny model (the one-chunk-in-flight figure isolates Serve's own cost). "
        "Overheads in ms are differences of median one-token latencies: what one call through Serve (or HTTP on top "
        "of Serve) costs beyond the model work; they are fixed per request, so they matter for small models and "
        "short answers and vanish against a real model's forward pass. Batch-32 vs batch-1 shows what the "
        "`max_batch_size` setup option buys; the plain loop's own batch-32 / batch-1 ratio (in its raw figures) is "
        "the model's share of that gain. The machine is small and shared: rows/s move by +-20 % between runs, so "
        "compare ratios, not absolute rows/s, and rerun before reading much into a single figure. Each benchmark's "
        "docstring (`bench/<name>.py`) describes its method; its full JSON is below and in "
        f"[`{json_name}`]({json_name}).")
    L.append("")
    L.append("## Runs")
    L.append("")
    L.append("| benchmark | command | status | wall time | load average at its start / end |")
    L.append("| --- | --- | --- | --- | --- |")
    for o in outcomes:
        m = _get(o.results, "machine") or {}
        load = f"{m.get('loadavg_start', '?')} / {m.get('loadavg_end', '?')}" if m else "n/a"
        status = o.status if o.ok or o.status == "not run" else f"**failed** ({o.error})"
        wall = f"{o.seconds:.0f} s" if o.seconds is not None else ""
        L.append(f"| {o.bench.name} | `{_cell(o.command)}` | {_cell(status)} | {wall} | {load} |")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        L.append("")
        L.append("## Failures")
        for o in failed:
            L.append("")
            L.append(f"`{o.command}`: {o.error}. Last lines of its stderr:")
            L.append("")
            L.append("```text")
            L.extend(o.stderr_tail or ["(no stderr)"])
            L.append("```")
    L.append("")
    L.append("## Full JSON")
    L.append("")
    L.append(f"Also in [`{json_name}`]({json_name}).")
    for o in outcomes:
        if o.results is None:
            continue
        L.append("")
        L.append(f"<details><summary>{o.bench.name}: <code>{o.command}</code></summary>")
        L.append("")
        L.append("```json")
        L.append(json.dumps(o.results, indent=2))
        L.append("```")
        L.append("")
        L.append("</details>")
    L.append("")
    return "\n".join(L)


# -- main ------------------------------------------------------------------------------------------------
def select(only: Sequence[str] | None) -> list[Bench]:
    if not only:
        return list(BENCHMARKS)
    wanted: list[str] = []
    for item in only:
        for name in filter(None, (s.strip().removesuffix(".py").removeprefix("bench/") for s in item.split(","))):
            hits = [b.name for b in BENCHMARKS if b.name == name] or [b.name for b in BENCHMARKS if b.name.startswith(name)]
            if len(hits) != 1:
                raise SystemExit(f"--only {name!r}: " + ("matches " + ", ".join(hits) if hits else "no such benchmark")
                                 + f" (benchmarks: {', '.join(BY_NAME)})")
            if hits[0] not in wanted:
                wanted.append(hits[0])
    return [b for b in BENCHMARKS if b.name in wanted]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--quick", action="store_true", help="smaller sizes: a smoke test that every benchmark runs")
    ap.add_argument("--only", action="append", metavar="NAME", help=f"run only these ({', '.join(BY_NAME)})")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one benchmark may take (default 3600)")
    ap.add_argument("--out-md", default=str(BENCH / "RESULTS.md"), help="the report (default bench/RESULTS.md)")
    ap.add_argument("--out-json", default=str(BENCH / "results.json"), help="all JSON (default bench/results.json)")
    ap.add_argument("--list", action="store_true", help="print the commands that would run, and stop")
    args = ap.parse_args(argv)

    chosen = select(args.only)
    if args.list:
        for b in chosen:
            print(f"{b.name:14s} {python_shown()} {' '.join(map(shlex.quote, command_of(b, args.quick)))}")
        return 0

    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = _common.loadavg()
    mach = machine()
    t0 = time.perf_counter()
    outcomes = [Outcome(b, " ".join([python_shown(), *map(shlex.quote, command_of(b, args.quick))])) for b in BENCHMARKS]
    with tempfile.TemporaryDirectory(prefix="byzer-like-run-all-") as tmp:
        for i, b in enumerate(BENCHMARKS):
            if b in chosen:
                outcomes[i] = run_one(b, args.quick, args.timeout, Path(tmp))
    total_s = time.perf_counter() - t0
    load_after = _common.loadavg()

    out_md, out_json = Path(args.out_md), Path(args.out_json)
    for out in (out_md, out_json):
        out.parent.mkdir(parents=True, exist_ok=True)
    try:
        json_name = os.path.relpath(out_json, out_md.parent)
    except ValueError:
        json_name = str(out_json)
    out_md.write_text(render_md(outcomes, mach, load_before, load_after, started, total_s, args.quick, json_name),
                      encoding="utf-8")
    out_json.write_text(json.dumps({
        "quick": args.quick, "started": started, "seconds": round(total_s, 1),
        "machine": {**mach, "loadavg_before": load_before, "loadavg_after": load_after},
        "benchmarks": {o.bench.name: {"command": o.command, "status": o.status, "error": o.error,
                                      "returncode": o.returncode, "seconds": o.seconds, "results": o.results,
                                      **({"stderr_tail": o.stderr_tail} if o.status == "failed" else {})}
                       for o in outcomes},
    }, indent=2) + "\n", encoding="utf-8")

    print(f"\n=== all done in {total_s / 60:.1f} min; load average before {load_before}, after {load_after}")
    for o in outcomes:
        if o.status != "not run":
            print(f"  {o.bench.name:14s} {o.status:7s} {o.seconds or 0:7.0f} s" + (f"  ({o.error})" if o.error else ""))
    print(f"wrote {out_md} and {out_json}")
    failed = [o.bench.name for o in outcomes if o.status == "failed"]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
