"""Everyday use without surprises, without a Ray cluster: a failing notebook cell stops the notebook;
exit statuses that say whether a command did what was asked; Ctrl-C at the `byzer-like sql` prompt
keeps the session; lists with headers, local times and integers; "did you mean" for misspelt options;
CLI messages that name CLI flags. The CLI runs as a user runs it: subprocesses, a real terminal (pty)."""
from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from byzer_like.catalog import Catalog
from byzer_like.config import SetupConfig, chat_request
from byzer_like.errors import UnknownOptionError
from byzer_like.tasks import get as get_task

CLI = str(Path(sys.executable).with_name("byzer-like"))
TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"

pytestmark = pytest.mark.timeout(180)


def run(*args, ws, timeout=120, input=None, env=None):
    env = {**os.environ, "BYZER_LIKE_HOME": str(ws), **(env or {})}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=env, input=input)


class Terminal:
    """The CLI on a pseudo-terminal, as in a terminal window: what it prints is read back, keys are typed
    (Ctrl-C is the terminal's interrupt character, which sends SIGINT to the program)."""

    def __init__(self, *args: str, ws: Path):
        env = {**os.environ, "BYZER_LIKE_HOME": str(ws), "TERM": "dumb"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the CLI, with the pty as its controlling terminal
            os.execve(CLI, [CLI, *args], env)
        self.out = ""
        self.seen = 0  # where the last match ended

    def expect(self, text: str, timeout: float = 90) -> str:
        """Read until `text` has been printed after the previous match (as pexpect does); return what
        was printed from the previous match up to the end of this one."""
        deadline = time.monotonic() + timeout
        while text not in self.out[self.seen:]:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} not printed; the terminal shows:\n{self.out[-3000:]}"
            if select.select([self.fd], [], [], min(left, 0.5))[0]:
                try:
                    self.out += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the program ended
                    assert text in self.out[self.seen:], f"{text!r} not printed before the end:\n{self.out[-3000:]}"
        start, self.seen = self.seen, self.out.index(text, self.seen) + len(text)
        return self.out[start:self.seen]

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 60) -> int:
        """The exit status, once the program has ended (reading what it still prints)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if select.select([self.fd], [], [], 0.2)[0]:
                try:
                    self.out += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:
                    pass
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"the program did not end; the terminal shows:\n{self.out[-3000:]}")


@pytest.fixture
def ws(tmp_path):
    return tmp_path / "ws"


# -- 4. errors stop the work -------------------------------------------------------------------------
def test_a_failing_byzer_cell_stops_the_notebook_with_the_one_line_message(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("BYZER_LIKE_HOME", str(tmp_path / "ws"))
    cells = ["%load_ext byzer_like", "%%byzer\nselect * from no_such_table as t;", "print('ran past the error')"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    with pytest.raises(CellExecutionError) as raised:
        client.execute()
    (error,) = [o for o in nb.cells[1].outputs if o.output_type == "error"]
    shown = "\n".join(error.traceback)
    assert error.ename == "CellError" and "unknown table 'no_such_table'" in error.evalue
    assert shown.startswith("UnknownTableError: line 1, column 15: unknown table 'no_such_table'"), shown
    assert "Traceback" not in shown and "byzer_like" not in shown and ".py" not in shown, shown
    assert not nb.cells[2].outputs  # the notebook stopped at the failing cell
    assert "unknown table 'no_such_table'" in str(raised.value) and "ran past the error" not in str(raised.value)


def test_exit_statuses_say_whether_there_was_anything_to_do(ws):
    """Stop / status with nothing running: 3; the codes are documented in the help's epilog."""
    for args in (["cluster", "stop"], ["serve", "--stop"], ["serve", "--status"], ["cluster", "status"]):
        out = run(*args, ws=ws)
        assert out.returncode == 3, (args, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr
    assert "no cluster was running" in run("cluster", "stop", ws=ws).stdout
    assert "no HTTP API is running" in run("serve", "--stop", ws=ws).stdout
    usage = run("--help", ws=ws).stdout
    assert "Exit status" in usage and "4    a job ended STOPPED" in usage and "3    nothing to act on" in usage


def _job(catalog: Catalog, job_id: str, state: str, output_table: str | None = None, **fields) -> None:
    catalog.create_job(job_id, "sft", model_type="llama", base_model="/m", output_table=output_table, params={},
                       sys_conf={}, detached=False, run_dir=str(catalog.workspace.path("jobs", job_id)))
    catalog.update_job(job_id, state=state, **fields)


def test_job_commands_exit_with_the_jobs_state(ws):
    catalog = Catalog(ws)
    _job(catalog, "sft-failed", "FAILED", error="boom", finished_at=time.time())
    _job(catalog, "sft-stopped", "STOPPED", error="stopped by request", finished_at=time.time())
    _job(catalog, "sft-done", "SUCCEEDED", finished_at=time.time())
    assert run("jobs", "status", "sft-done", ws=ws).returncode == 0
    assert run("jobs", "status", "sft-failed", ws=ws).returncode == 1
    stopped = run("jobs", "status", "sft-stopped", ws=ws)
    assert stopped.returncode == 4 and json.loads(stopped.stdout)["state"] == "STOPPED"
    assert re.fullmatch(TIME, json.loads(stopped.stdout)["finished_at"])  # a local time, not an epoch float
    # the CLI's JSON names fields as the client's rows do (job_id, not the catalog's id)
    from byzer_like.runtime import Runtime

    row = next(r for r in Runtime(workspace=ws).jobs.list() if r["job_id"] == "sft-stopped")
    shown = json.loads(stopped.stdout)
    assert shown["job_id"] == "sft-stopped" and "id" not in shown and set(row) - {"metrics"} <= set(shown)
    again = run("jobs", "stop", "sft-done", ws=ws)
    assert again.returncode == 3 and "already ended" in again.stdout
    assert run("jobs", "resume", "sft-done", ws=ws).returncode == 1  # only STOPPED / FAILED jobs resume


def test_jobs_tensorboard_serves_the_jobs_event_files_on_localhost(ws):
    """`jobs status` names the folder of a job's TensorBoard event files, and `jobs tensorboard` serves it on
    127.0.0.1; a job without event files gets a one-line error saying how to get them."""
    import socket
    import urllib.request

    catalog = Catalog(ws)
    _job(catalog, "sft-plain", "SUCCEEDED", finished_at=time.time())
    none = run("jobs", "tensorboard", "sft-plain", ws=ws)
    assert none.returncode != 0 and "has written no TensorBoard event files" in none.stderr
    assert "Traceback" not in none.stderr and json.loads(run("jobs", "status", "sft-plain", ws=ws).stdout)[
        "tensorboard_dir"] is None
    _job(catalog, "sft-tb", "SUCCEEDED", finished_at=time.time())
    folder = ws / "jobs" / "sft-tb" / "tensorboard"
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as w:
        w.add_scalar("train/loss", 1.5, 1)
    assert json.loads(run("jobs", "status", "sft-tb", ws=ws).stdout)["tensorboard_dir"] == str(folder)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([CLI, "jobs", "tensorboard", "sft-tb", "--port", str(port)], text=True,
                            env={**os.environ, "BYZER_LIKE_HOME": str(ws)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while True:  # TensorBoard's start-up (it imports tensorflow's stubs): bounded, then the page
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5).read().decode()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "TensorBoard did not start in 90 s"
                time.sleep(1)
        assert json.loads(page) == ["."]  # the job's one run of event files
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    import psutil

    deadline = time.monotonic() + 20  # stopping the command stops TensorBoard and its data server too
    while (left := [p.pid for p in psutil.process_iter(["cmdline"]) if str(folder) in " ".join(p.info["cmdline"] or [])]):
        assert time.monotonic() < deadline, f"TensorBoard left running after the command stopped: {left}"
        time.sleep(0.5)


# -- 6. the SQL prompt ------------------------------------------------------------------------------
def test_ctrl_c_at_the_sql_prompt_clears_the_input_and_keeps_the_session(ws):
    ws.mkdir(parents=True)
    (ws / "n.jsonl").write_text("".join(json.dumps({"i": i}) + "\n" for i in range(3000)))
    term = Terminal("sql", ws=ws)
    term.expect("byzer> ")
    term.type("load json.`n.jsonl` as n;\n")
    term.expect("load: n: 3000 rows")
    term.expect("byzer> ")
    term.type("select count(*) as c\n")
    term.expect("...> ")
    term.type("from n where i <")  # half a statement (the terminal shows it as typed), then Ctrl-C
    term.expect("where i <")
    time.sleep(0.5)  # a person's pause: CPython's readline misses a signal that lands while it handles a key
    term.type("\x03")
    term.expect("byzer> ")
    term.type("!show tables;\n")
    shown = term.expect("byzer> ")
    assert re.search(r"table +rows +columns", shown) and re.search(r"\bn +3000 +1\b", shown), shown
    # Ctrl-C while a statement runs (a 27-billion-row join) stops that statement; the session stays
    term.type("select count(*) as c from n as a, n as b, n as c2 where a.i + b.i + c2.i = -1 as slow;\n")
    term.expect("as slow;")
    time.sleep(2)  # let it run
    term.type("\x03")
    term.expect("interrupted")
    term.expect("byzer> ")
    term.type("select count(*) as k from n as again;\n")
    term.expect("select: again: 1 rows")
    term.expect("byzer> ")
    term.type("\x04")  # Ctrl-D ends the prompt
    assert term.wait() == 0, term.out[-3000:]
    assert re.search(r"k\s+3000\s", term.out.split("as again;")[-1]) and "Traceback" not in term.out, term.out[-3000:]


# -- 7. readable output -----------------------------------------------------------------------------
def _registry_and_jobs(ws: Path) -> None:
    catalog = Catalog(ws)
    catalog.register_model("qa", kind="adapter", path="/models/qa", base_model="/m", model_type="llama",
                           method="lora", params={}, metrics={"final_loss": 0.123456, "tokens_per_s": 812.5},
                           job_id="sft-1")
    _job(catalog, "sft-1", "SUCCEEDED", "qa", step=8, total_steps=8, model_version=1, finished_at=time.time(),
         metrics={"final_loss": 0.5, "loss": 0.6, "tokens_per_s": 100.0, "progress": 1.0})
    _job(catalog, "sft-2", "STOPPED", step=3, total_steps=None, finished_at=None, metrics={})
    _job(catalog, "dpo-1", "SUCCEEDED", "prefs", step=4, total_steps=4, finished_at=time.time(),
         metrics={"loss": 0.69, "rewards/margins": 0.0421, "tokens_per_s": 50.0})


def test_empty_lists_say_none_under_a_header(ws):
    for args, header in ((["jobs", "list"], "job"), (["models", "list"], "model")):
        term = Terminal(*args, ws=ws)
        assert term.wait() == 0
        lines = [line.rstrip() for line in term.out.replace("\r", "").splitlines() if line.strip()]
        note = [line for line in lines if line.startswith(f"workspace {ws} (")]  # stderr: which workspace, new or empty
        lines = [line for line in lines if line not in note]
        assert lines[0].split()[0] == header and lines[1:] == ["(none)"], term.out
        assert len(note) == 1 and ("(new: " in note[0] or "(empty: no " in note[0]), term.out
        piped = run(*args, ws=ws)  # to a pipe: the header alone, tab-separated
        assert piped.returncode == 0 and piped.stdout.count("\n") == 1 and "\t" in piped.stdout


def test_lists_have_headers_local_times_and_integers(ws):
    _registry_and_jobs(ws)
    term = Terminal("jobs", "list", ws=ws)
    assert term.wait() == 0
    lines = [line.rstrip() for line in term.out.replace("\r", "").splitlines() if line.strip()]
    header = lines[0].split()
    assert header[:7] == ["job", "state", "step", "model", "loss", "tokens/s", "margin"]
    done = next(line for line in lines if line.startswith("sft-1"))
    assert lines[0].index("state") == done.index("SUCCEEDED")  # aligned under the header
    assert " 8/8 " in done and " qa@v1 " in done and " 0.5 " in done and " 100 " in done
    assert len(re.findall(TIME, done)) == 2 and "e+09" not in term.out
    assert " 3/? " in next(line for line in lines if line.startswith("sft-2"))
    assert " 0.0421 " in next(line for line in lines if line.startswith("dpo-1"))  # a preference run's margin

    models = run("models", "list", ws=ws)  # piped: tab-separated, same header
    rows = [line.split("\t") for line in models.stdout.splitlines()]
    assert rows[0] == ["model", "kind", "stage", "method", "type", "loss", "tokens/s", "margin", "created",
                       "path"]
    assert rows[1][:8] == ["qa@v1", "adapter", "candidate", "lora", "llama", "0.1235", "812.5", ""]  # no preference run
    assert re.fullmatch(TIME, rows[1][8])
    Catalog(ws).set_stage("qa@v1", "production")  # which version `qa@production` deploys
    assert run("models", "list", ws=ws).stdout.splitlines()[1].split("\t")[:3] == ["qa@v1", "adapter", "production"]


def test_sql_results_show_times_and_integers_readably(ws):
    _registry_and_jobs(ws)
    ws.joinpath("s.sql").write_text("!byzerllm model list;\n!byzerllm job list;\n")
    out = run("run", str(ws / "s.sql"), ws=ws)
    assert out.returncode == 0, out.stderr
    assert "e+09" not in out.stdout and len(re.findall(TIME, out.stdout)) >= 3, out.stdout
    jobs = out.stdout.split("-- [2] job")[1]
    header = jobs.splitlines()[1].split()
    assert {"loss", "tokens_per_s", "model_version", "created_at"} <= set(header)
    assert re.search(r" qa +1 ", jobs) and " 1.0 " not in jobs, jobs  # model_version 1 (not 1.0)
    assert "<NA>" not in jobs and "NaN" not in jobs and "NaT" not in jobs, jobs  # NULLs are blank

    from byzer_like.session import Session
    from byzer_like.runtime import Runtime

    s = Session(Runtime(workspace=ws), progress=False)
    try:
        row = s.sql("!byzerllm job list;")[0].table.to_pylist()[-1]
        models = s.sql("!byzerllm model list;")[0].table
    finally:
        s.close()
    assert isinstance(row["created_at"], dt.datetime) and row["loss"] == 0.5 and row["tokens_per_s"] == 100.0
    assert json.loads(row["metrics"])["progress"] == 1.0  # the whole metrics stay, as JSON
    assert models.column("loss").to_pylist() == [0.123456] and str(models.schema.field("created_at").type) == "timestamp[s]"


def test_misspelt_options_get_did_you_mean_before_the_list():
    sft = get_task("sft")
    base = {"pretrainedModelType": "sft/llama", "localModelDir": "m"}
    cases = [
        (lambda: sft.parse_options({**base, "epoch": "3"}), "did you mean 'epochs'? valid options: "),
        (lambda: chat_request("hi", {"temprature": 0.1}), "did you mean 'temperature'? valid options: "),
        (lambda: sft.parse_options({**base, "learningRat": "1e-3"}), "did you mean 'learningRate'?"),
        (lambda: sft.parse_options({**base, "sft.int.max_seq_lenght": "64"}), "did you mean 'sft.int.max_seq_length'?"),
        (lambda: SetupConfig().with_values({"num_worker": 2}), "did you mean 'num_workers'?"),
        (lambda: SetupConfig().with_values({"num_gpu": 1}), "did you mean 'num_gpus'?"),  # a Byzer alias
    ]
    for call, text in cases:
        with pytest.raises(UnknownOptionError) as e:
            call()
        assert text in str(e.value), str(e.value)
    # a key near no setting is a custom one (Byzer's OWNER): it reaches the plugins' sys_conf as given
    assert SetupConfig().with_values({"colour": 1}).sys_conf()["colour"] == "1"


def test_misspelt_load_option_and_format_from_the_command_line(ws):
    ws.mkdir(parents=True)
    (ws / "d.csv").write_text("a,b\n1,2\n")
    (ws / "s.sql").write_text("load csv.`d.csv` where heade=\"true\" as d;\n")
    out = run("run", str(ws / "s.sql"), ws=ws)
    assert out.returncode == 1 and "unknown load csv option 'heade'; did you mean 'header'?" in out.stderr
    (ws / "s.sql").write_text("load jsn.`d.csv` as d;\n")
    out = run("run", str(ws / "s.sql"), ws=ws)
    assert out.returncode == 1 and "did you mean 'json'?" in out.stderr, out.stderr


def test_cli_messages_name_cli_flags(ws, tiny_models):
    """An error the runtime words for Python and SQL (`overwrite="true"`, `outputTable`) names the
    CLI's flags when the CLI shows it."""
    data = ws / "qa.jsonl"
    ws.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": str(i)}) + "\n" for i in range(4)))
    Catalog(ws).register_model("taken", kind="model", path=str(tiny_models["llama"]), base_model=None,
                               model_type="llama", method="full", params={}, metrics={}, job_id=None)
    roots = {"BYZER_LIKE_ALLOWED_ROOTS": str(tiny_models["llama"].parent)}
    out = run("train", "sft", "--data", str(data), "--model-path", str(tiny_models["llama"]), "--type", "llama",
              "--output-table", "taken", ws=ws, env=roots)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("error: --output-table 'taken' is already a registered model (taken@v1)")
    assert "--option overwrite=true" in out.stderr and 'overwrite="true"' not in out.stderr
    misspelt = run("train", "sft", "--data", str(data), "--model-path", str(tiny_models["llama"]), "--type", "llama",
                   "--option", "epoch=2", ws=ws, env=roots)
    assert misspelt.returncode == 1 and "unknown sft option 'epoch'; did you mean 'epochs'?" in misspelt.stderr
