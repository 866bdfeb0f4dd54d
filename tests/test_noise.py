"""What a user sees: byzer-like's output and real warnings, not the libraries' chatter; and a command
line that does not import what it does not use.

The CLI, a client script and a notebook kernel run as a user runs them (subprocesses, against the
session's persistent head), and their stderr must hold none of the noise `byzer_like.logs` keeps
out: nanobind's leak report, DeepSpeed's accelerator line, Ray's and Serve's INFO lines, SIGTERM
stack dumps, tqdm's ipywidgets warning. With `BYZER_LIKE_LOG=debug` Ray's INFO lines come back, so
the checks can fail.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("byzer-like"))
NOISE = ("nanobind: leaked", "Setting accelerator", "Started <", "INFO", "Traceback", "IProgress not found",
         "ipywidgets", "SIGTERM received", "Failed to load")
HEAVY = ("torch", "transformers", "ray", "pandas", "duckdb", "pyarrow", "deepspeed", "peft")


def _env(ws: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "BYZER_LIKE_HOME": str(ws), **extra}
    if "BYZER_LIKE_LOG" not in extra:
        env.pop("BYZER_LIKE_LOG", None)
    return env


def cli(*args: str, ws: Path, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=_env(ws, **env))


def assert_quiet(what: str, text: str) -> None:
    found = [n for n in NOISE if n in text]
    assert not found, f"{what} printed {found}:\n{text[-3000:]}"


# -- no cluster ----------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_the_cli_imports_no_ml_library_to_start():
    """`import byzer_like.cli` and building its parser (what --help, `models list` pay) load none of the
    heavy libraries; `from byzer_like import ByzerLLM` still works."""
    code = ("import json, sys, byzer_like, byzer_like.cli as c; c.build_parser().format_help(); "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = {m.split(".")[0] for m in json.loads(out.stdout)}
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
    out = subprocess.run([sys.executable, "-c", "from byzer_like import ByzerLLM, LLMResponse; print(ByzerLLM.__name__)"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ByzerLLM", out.stderr


@pytest.mark.timeout(60)
def test_serve_controller_is_found_by_ray_serves_own_names():
    """`manager.serve_running` asks the GCS for Serve's controller by name, without importing Serve."""
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    from byzer_like.serving import manager

    assert manager.SERVE_CONTROLLER == {"name": SERVE_CONTROLLER_NAME, "namespace": SERVE_NAMESPACE}


@pytest.mark.timeout(30)
def test_the_policy_filters_libraries_and_verbose_lifts_it(monkeypatch):
    """INFO from Serve goes, its warnings stay; DeepSpeed's accelerator line goes, its other warnings
    stay; with BYZER_LIKE_LOG=debug everything passes."""
    from byzer_like import logs

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    serve_log, ds_log = logging.getLogger("ray.serve"), logging.getLogger("DeepSpeed")
    handler = Keep()
    levels = {lg: lg.level for lg in (serve_log, ds_log)}
    for lg in levels:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)

    def emit_all() -> list[str]:
        seen.clear()
        serve_log.info("Started <router>.")
        serve_log.warning("replica unhealthy")
        ds_log.warning("Setting accelerator to CPU. If you have GPU ...")
        ds_log.warning("ZeRO stage 3 needs ...")
        return list(seen)

    try:
        monkeypatch.delenv(logs.ENV, raising=False)
        logs.configure()
        assert emit_all() == ["replica unhealthy", "ZeRO stage 3 needs ..."]
        assert logs.ray_init_options() == {"logging_level": logging.WARNING, "log_to_driver": False}
        monkeypatch.setenv(logs.ENV, "debug")
        logs.configure()
        assert len(emit_all()) == 4
        assert logs.ray_init_options()["log_to_driver"] is True
    finally:
        for lg, level in levels.items():
            lg.removeHandler(handler)
            lg.setLevel(level)
        monkeypatch.delenv(logs.ENV, raising=False)
        logs.configure()


# -- a user's session ----------------------------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.timeout(240)
def test_a_cli_session_prints_no_library_noise(ray_cluster, workspace, tiny_models):
    model = str(tiny_models["llama"])
    steps = [
        ("models", "make-tiny", "--family", "llama", "--out", str(workspace / "models" / "noise-llama"),
         "--pretrain-seconds", "1"),
        ("deploy", model, "--type", "llama", "--name", "noise_chat", "--num-workers", "1", "--cpus-per-worker", "0.5"),
        ("list",),
        ("chat", "noise_chat", "hello", "--max-new-tokens", "4"),
    ]
    try:
        for step in steps:
            out = cli(*step, ws=workspace)
            assert out.returncode == 0, f"{step}: {out.stderr}"
            assert_quiet(" ".join(step[:2]), out.stderr + out.stdout)
        # the HTTP API in the foreground (Serve logs `Started <...Router...>` as it gets a handle), ended
        # by SIGTERM (no stack dump from Ray's signal handler), then stopped (`Deleting app`)
        proc = subprocess.Popen([CLI, "serve", "--port", "0", "--replace"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=_env(workspace))
        try:
            assert "HTTP API at" in proc.stdout.readline()
            proc.terminate()
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert_quiet("serve ended by SIGTERM", err)
        for step in (("serve", "--stop"), ("undeploy", "noise_chat")):
            out = cli(*step, ws=workspace)
            assert out.returncode == 0, f"{step}: {out.stderr}"
            assert_quiet(" ".join(step), out.stderr + out.stdout)
    finally:
        if "noise_chat" in cli("list", ws=workspace).stdout:
            cli("undeploy", "noise_chat", ws=workspace)
        cli("serve", "--stop", ws=workspace)
    # the checks can fail: asked for, Ray's INFO lines show
    for args, env in ((("list",), {"BYZER_LIKE_LOG": "debug"}), (("list", "--verbose"), {})):
        loud = cli(*args, ws=workspace, **env)
        assert loud.returncode == 0 and "INFO" in loud.stderr, (args, env, loud.stderr)


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_a_client_script_prints_no_library_noise(ray_cluster, workspace, tiny_models):
    """Deploy, chat, stream, a SQL select (a DuckDB session with Python functions), undeploy, exit."""
    script = textwrap.dedent(f"""
        from byzer_like import ByzerLLM
        llm = ByzerLLM()
        llm.setup_num_workers(1).setup_cpus_per_worker(0.5)
        llm.deploy(model_path={str(tiny_models["llama"])!r}, pretrained_model_type="llama", udf_name="noise_py",
                   infer_params={{}})
        try:
            print(llm.chat_oai([{{"role": "user", "content": "hi"}}], model="noise_py",
                               llm_config={{"max_new_tokens": 4}})[0].output)
            print("".join(d for d, _ in llm.stream_chat_oai("hi", model="noise_py", llm_config={{"max_new_tokens": 4}})))
            print(llm.sql("select noise_py(llm_param(map('instruction', 'hi', 'max_new_tokens', '4'))) as r as t;"))
        finally:
            llm.undeploy("noise_py")
        print("done")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=170,
                         env=_env(workspace))
    assert out.returncode == 0 and out.stdout.rstrip().endswith("done"), out.stderr
    assert_quiet("client script", out.stderr)


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_a_notebook_prints_no_library_noise(ray_cluster, workspace):
    """`import ray` in a kernel logs `Missing packages: ['ipywidgets']`; `tqdm.auto` (transformers,
    datasets) warns `IProgress not found`: neither reaches the cells once byzer_like is loaded."""
    import nbformat
    from nbclient import NotebookClient

    cells = ["%load_ext byzer_like", "%byzer !byzerllm model deployed;", "from tqdm.auto import tqdm"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    os.environ.pop("BYZER_LIKE_LOG", None)
    NotebookClient(nb, timeout=150, kernel_name="python3").execute()
    stderr = "".join(o.get("text", "") for c in nb.cells for o in c.outputs
                     if o.output_type == "stream" and o.name == "stderr")
    assert_quiet("notebook", stderr)


FIXTURES = Path(__file__).resolve().parent / "fixtures" / "job_logs"


@pytest.mark.parametrize("log, kept, hidden", [
    ("sft.txt", ["[byzer-like] job sft-", "[byzer-like] training from step 0 of 12", "[byzer-like] step 1/12 ",
                 "[byzer-like] step 5/12 ", "[byzer-like] step 10/12 ", "{'train_runtime': ",
                 "[byzer-like] registered llama2_300@v1", "[byzer-like] job sft-"],
     {"compiled-extension load failures": 2, "torch deprecation notices": 2, "optional kernels not installed": 1,
      "progress bars": 2, "deprecation warnings": 2, "accelerator notices": 1, "steps logged twice": 3,
      "blank lines around them": 1}),
    ("sfft.txt", ["[byzer-like] job sfft-", "[byzer-like] sfft run ", "[byzer-like] sfft run ",
                  "[byzer-like] registered acc_tb_model@v1", "[byzer-like] job sfft-"], {"Ray Data progress": 5}),
])
def test_a_real_job_log_reads_without_library_noise(log, kept, hidden):
    """Logs of real sft / sfft jobs (tests/fixtures/job_logs): the job's own lines stay, in order, each step
    once; the libraries' lines go, counted by kind."""
    from byzer_like.logs import readable_log

    text, dropped = readable_log((FIXTURES / log).read_text())
    lines = text.splitlines()
    assert len(lines) == len(kept) and all(line.startswith(k) for line, k in zip(lines, kept)), text
    assert dropped == hidden and text.endswith("\n")


def test_repeats_and_a_warnings_source_line_go_and_a_log_without_own_steps_keeps_the_trainers():
    from byzer_like.logs import readable_log

    text = ("x.py:3: DeprecationWarning: old\n  warnings.warn(\n  indented own line\nsaving\nsaving\n"
            "{'loss': '1.5', 'epoch': '1'}\n")
    assert readable_log(text) == ("  indented own line\nsaving\n{'loss': '1.5', 'epoch': '1'}\n",
                                  {"deprecation warnings": 2, "repeated lines": 1})


def test_jobs_logs_shows_the_readable_log_and_verbose_the_whole_file(monkeypatch, capsys):
    """`byzer-like jobs logs` (cli/training.py): the readable log on stdout, one line on stderr saying what was
    hidden; with BYZER_LIKE_LOG=debug (--verbose) the file as it is."""
    from byzer_like.cli import training

    raw = (FIXTURES / "sft.txt").read_text()

    class Jobs:
        def logs(self, job_id):
            return raw

        def status(self, job_id):
            return {"state": "SUCCEEDED"}

    monkeypatch.delenv("BYZER_LIKE_LOG", raising=False)
    assert training._print_logs(Jobs(), "sft-1", follow=True) == 0
    out = capsys.readouterr()
    assert "Failed to load" not in out.out and out.out.count("[byzer-like] step ") == 3 and "{'loss'" not in out.out
    assert out.err == ("(14 lines of library output hidden: accelerator notices, blank lines around them, "
                       "compiled-extension load failures, "
                       "deprecation warnings, optional kernels not installed, progress bars, steps logged twice, "
                       "torch deprecation notices; --verbose shows the whole log)\n")
    monkeypatch.setenv("BYZER_LIKE_LOG", "debug")
    training._print_logs(Jobs(), "sft-1", follow=False)
    out = capsys.readouterr()
    assert out.out == raw and out.err == ""
