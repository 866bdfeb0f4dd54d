"""Continued pretraining (sfft) on a real local Ray cluster: Ray Train V2 workers, real DeepSpeed ZeRO on CPU,
a real tiny llama. Loss goes down and the export deploys; a killed worker and a killed driver both resume
from the last checkpoint; an evalTable is measured every evalSteps; keepPartitionNum keeps a TableRepartition'ed
table's partitions whole per worker; bad input is refused before any worker starts."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from byzer_like.errors import ConfigError
from byzer_like.train.ds_config import validate_deepspeed_config
from byzer_like.train.options import SfftOptions

FIRST_STEPS = 12  # the shared run: steps before the "driver failure"
MORE_STEPS = 16  # the same run continued by a second sfft_train call
KILL_STEPS = 24  # a ZeRO-3 run that loses a worker after its first checkpoint


def sfft_options(model_dir, **extra) -> SfftOptions:
    params = {"pretrainedModelType": "sfft/llama", "localModelDir": str(model_dir), "sfft.int.max_length": "64",
              "perDeviceBatchSize": "4", "learningRate": "3e-3", "loggingSteps": "2", "checkpointSteps": "4",
              "saveTotalLimit": "2", "warmupRatio": "0.1", "maxFailures": "2"}
    params.update({k: str(v) for k, v in extra.items()})
    return SfftOptions.from_params(params)


def english_lines(n: int = 480) -> list[str]:
    """Prose from the standard library's docstrings: one non-trivial line per row."""
    from byzer_like.tiny import prose_lines

    return prose_lines(n)


def write_table(path: Path, **columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture(scope="module")
def corpus(workspace) -> Path:
    lines = english_lines()
    return write_table(workspace / "sfft" / "corpus.parquet", id=list(range(len(lines))), text=lines)


@pytest.fixture(scope="module")
def first_run(llm, workspace, tiny_models, corpus):
    """One ZeRO-2 run on 2 CPU workers, through SQL as a user runs it (shared by the loss/deploy test and
    the driver-resume test)."""
    from byzer_like.session import Session

    options = " ".join(f'and `{k}`="{v}"' for k, v in {
        "sfft.int.max_length": "64", "perDeviceBatchSize": "4", "learningRate": "3e-3", "loggingSteps": "2",
        "checkpointSteps": "4", "saveTotalLimit": "2", "warmupRatio": "0.1", "maxFailures": "2",
        "maxSteps": FIRST_STEPS, "zeroStage": "2"}.items())
    session = Session(llm, progress=False)
    t0 = time.monotonic()
    try:
        row = session.sql(f"""
            load parquet.`{corpus}` as corpus;
            !byzerllm setup sfft;
            !byzerllm setup "num_workers=2";
            !byzerllm setup "cpus_per_worker=1";
            run command as LLM.`` where pretrainedModelType="sfft/llama" and localModelDir="{tiny_models['llama']}"
            and inputTable="corpus" and outputTable="sfft_tiny_model" and detached="false" {options};
        """)[-1].table.to_pylist()[0]
    finally:
        session.sql('!byzerllm setup single; !byzerllm setup "num_workers=1"; !byzerllm setup "cpus_per_worker=0.5";')
        session.close()
    job = llm.jobs.record(row["job_id"])
    return {"result": {"model_dir": row["artifact"], "metrics": json.loads(row["metrics"])}, "job_id": row["job_id"],
            "run_dir": Path(job["run_dir"]), "run_name": row["job_id"], "row": row, "seconds": time.monotonic() - t0}


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_zero2_two_workers_loss_goes_down_and_export_deploys(first_run, workspace, tiny_models, llm):
    import torch
    from transformers import AutoModelForCausalLM

    from byzer_like.catalog import Catalog

    result = first_run["result"]
    m = result["metrics"]
    print("first run:", json.dumps(m), f"{first_run['seconds']:.1f} s")
    assert m["steps"] == FIRST_STEPS and m["resumed_from_step"] == 0
    assert m["tokens"] == FIRST_STEPS * 4 * 64 * 2  # micro batch x max_length x workers per step
    assert m["final_loss"] < m["first_loss"] - 1.0, m
    assert m["tokens_per_s"] > 0 and m["train_runtime_s"] > 0

    history = Catalog(workspace).metric_history(first_run["job_id"])
    assert [h["step"] for h in history] == list(range(2, FIRST_STEPS + 1, 2))  # every logging_steps, rank 0 only
    assert history[-1]["progress"] == 1.0 and history[0]["loss"] > history[-1]["loss"]
    assert Catalog(workspace).job(first_run["job_id"])["step"] == FIRST_STEPS

    assert first_run["row"]["state"] == "SUCCEEDED" and first_run["row"]["model_version"] == 1
    ckpts = sorted(p.name for p in (first_run["run_dir"] / "ray_train" / first_run["run_name"]).glob("checkpoint_step_*"))
    assert ckpts == ["checkpoint_step_000000008", "checkpoint_step_000000012"]  # saveTotalLimit=2

    out = Path(result["model_dir"])
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {p.name for p in out.iterdir()}
    base = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    trained = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, use_safetensors=True)
    sb, st = base.state_dict(), trained.state_dict()
    assert sb.keys() == st.keys() and all(sb[k].shape == st[k].shape for k in sb)
    assert any(not torch.equal(sb[k], st[k]) for k in sb)  # the weights were trained

    assert Path(m["loss_curve"]).is_file() and m["loss_curve"].startswith(str(out))
    llm.deploy(None, "llama", "sfft_tiny", {"modelTable": "sfft_tiny_model"})  # the registered export
    try:
        answer = llm.chat_oai([{"role": "user", "content": "hi"}], model="sfft_tiny",
                              llm_config={"temperature": 0.0, "max_new_tokens": 8})
        assert len(answer) == 1 and isinstance(answer[0].output, str)
        assert answer[0].metadata["input_tokens"] > 0
    finally:
        llm.undeploy("sfft_tiny")


@pytest.mark.ray
@pytest.mark.heavy  # a second sfft run after killing its driver; a stopped job resuming from its checkpoint is in the default run (test_train)
@pytest.mark.timeout(420)
def test_driver_failure_resumes_the_run_by_name(first_run, tiny_models, corpus, capsys):
    """A second sfft_train call with the same run_dir + run_name continues from the last checkpoint."""
    from byzer_like.train.sfft import sfft_train

    run_dir = first_run["run_dir"]
    with pytest.raises(ConfigError, match="was trained by 2 workers.*num_workers=2"):  # its ZeRO shards are per worker
        sfft_train(model_dir=str(tiny_models["llama"]), data_path=str(corpus), output_dir=first_run["result"]["model_dir"],
                   run_dir=str(run_dir), run_name=first_run["run_name"], options=sfft_options(tiny_models["llama"], maxSteps=MORE_STEPS),
                   num_workers=1)
    result = sfft_train(model_dir=str(tiny_models["llama"]), data_path=str(corpus),
                        output_dir=first_run["result"]["model_dir"], run_dir=str(run_dir), run_name=first_run["run_name"],
                        options=sfft_options(tiny_models["llama"], maxSteps=MORE_STEPS, zeroStage=2),
                        num_workers=2, cpus_per_worker=1)
    m = result["metrics"]
    print("resumed run:", json.dumps(m))
    assert m["resumed_from_step"] == FIRST_STEPS and m["steps"] == MORE_STEPS
    assert m["tokens"] == (MORE_STEPS - FIRST_STEPS) * 4 * 64 * 2
    # It continued training (loss near where the first run ended), it did not start again from random init.
    assert m["first_loss"] < first_run["result"]["metrics"]["first_loss"] - 1.0
    out = capsys.readouterr().out
    assert f"a checkpoint at step {FIRST_STEPS} exists" in out and f"trained from step {FIRST_STEPS} to {MORE_STEPS}" in out
    state = json.loads((run_dir / "ray_train" / first_run["run_name"] / f"checkpoint_step_{MORE_STEPS:09d}" /
                        "byzer_like_state.json").read_text())
    assert state["step"] == MORE_STEPS and state["world_size"] == 2
    from byzer_like.cluster import head_info
    from byzer_like.workspace import Workspace

    assert_no_training_actors_left(head_info(Workspace.from_env()).dashboard_url)


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_eval_table_is_measured_per_eval_step_and_partitions_stay_whole(llm, workspace, tiny_models):
    """Through SQL, 2 workers: a TableRepartition'ed table with keepPartitionNum="true" (partition i -> worker
    i % 2, said in the log and the metrics), and an evalTable of held-out text whose perplexity (and eval
    loss) is measured every evalSteps, in the job's history and plotted beside the loss."""
    from byzer_like.catalog import Catalog
    from byzer_like.session import Session

    lines = english_lines(240)
    folder = workspace / "data" / "sfft_keep"
    write_table(folder / "train.parquet", doc=[f"doc{i % 4}" for i in range(200)], text=lines[:200])
    write_table(folder / "held.parquet", text=lines[200:232])
    session = Session(llm, progress=False)
    try:
        out = session.sql(f"""
            load parquet.`{folder / 'train.parquet'}` as docs;
            load parquet.`{folder / 'held.parquet'}` as held;
            run docs as TableRepartition.`` where partitionNum="4" and partitionCols="doc" as parts;
            !byzerllm setup sfft;
            !byzerllm setup "num_workers=2";
            !byzerllm setup "cpus_per_worker=1";
            run command as LLM.`` where pretrainedModelType="sfft/llama" and localModelDir="{tiny_models['llama']}"
            and inputTable="parts" and keepPartitionNum="true" and evalTable="held" and evalSteps="2"
            and detached="false" and `sfft.int.max_length`="32" and perDeviceBatchSize="2" and learningRate="3e-3"
            and loggingSteps="1" and maxSteps="4" and checkpointSteps="4" and zeroStage="2";
        """)
    finally:
        session.sql('!byzerllm setup single; !byzerllm setup "num_workers=1"; !byzerllm setup "cpus_per_worker=0.5";')
        session.close()
    assert "each kept whole on one of 2 training worker(s)" in out[-1].message
    row = out[-1].table.to_pylist()[0]
    assert row["state"] == "SUCCEEDED", row
    m = json.loads(row["metrics"])
    sizes = [50, 50, 50, 50]
    assert m["keep_partition_num"] == {"partitions": 4, "partitions_per_worker": [[0, 2], [1, 3]],
                                       "rows_per_worker": [sizes[0] + sizes[2], sizes[1] + sizes[3]]}
    assert m["eval_perplexity"] > 1 and m["eval_loss"] == pytest.approx(-m["eval_mean_token_logprob"])
    history = Catalog(workspace).metric_history(row["job_id"])
    evals = [(h["step"], h["eval_perplexity"]) for h in history if "eval_perplexity" in h]
    assert [s for s, _ in evals] == [2, 4]  # every evalSteps, the last one at the end
    assert evals[-1][1] < evals[0][1]  # the held-out text of the same prose gets likelier
    assert all("loss" in h and "eval_loss" in h for h in history if h["step"] in (2, 4))  # one point per step
    assert Path(m["loss_curve"]).stat().st_size > 1000
    log = llm.jobs.logs(row["job_id"])
    assert "keepPartitionNum: 4 partitions kept whole" in log and "worker 1: partitions 1, 3 (100 rows)" in log


def test_whole_partitions_go_to_worker_i_mod_n_and_are_read_in_order(tmp_path, tiny_models):
    from byzer_like.train.sfft_data import _PartitionShard, _placement, assign_partitions

    assert assign_partitions([3, 0, 2, 4, 1], 2) == [[(0, 0, 3), (2, 3, 2), (4, 9, 1)], [(3, 5, 4)]]
    assert assign_partitions([2, 2], 3) == [[(0, 0, 2)], [(1, 2, 2)], []]
    table = write_table(tmp_path / "t.parquet", text=[f"row {i}" for i in range(10)])
    shard = _PartitionShard(str(table), "text", [(0, 0, 3), (2, 5, 4)])
    batches = list(shard.iter_batches(batch_size=2, batch_format="pyarrow"))
    assert [b.column("text").to_pylist() for b in batches] == [["row 0", "row 1"], ["row 2"], ["row 5", "row 6"],
                                                               ["row 7", "row 8"]]  # never two partitions in one batch
    keep = sfft_options(tiny_models["llama"], keepPartitionNum="true")
    with pytest.raises(ConfigError, match=r"leave worker\(s\) 1 of 2 without rows"):
        _placement(keep, [5, 0, 5, 0], 10, 2)
    with pytest.raises(ConfigError, match="hold 9 rows, the input table 10"):
        _placement(keep, [4, 5], 10, 2)
    assert _placement(keep, None, 10, 2) is None  # no recorded partitioning: Ray Data's split, said in the log
    assert _placement(sfft_options(tiny_models["llama"]), [5, 5], 10, 2) is None  # not asked for


@pytest.mark.ray
@pytest.mark.faults  # with the fault tests: a few minutes of ZeRO-3, on one node (tests/test_faults.py: on three)
@pytest.mark.timeout(480)
def test_killed_worker_restarts_from_the_last_checkpoint(ray_cluster, workspace, tiny_models, corpus):
    from ray.util.state import list_actors

    from byzer_like.cluster import head_info
    from byzer_like.train.sfft import latest_checkpoint_state, sfft_train
    from byzer_like.workspace import Workspace

    run_dir = workspace / "sfft" / "runs" / "kill"
    out_dir = workspace / "sfft" / "out" / "kill"
    opts = sfft_options(tiny_models["llama"], maxSteps=KILL_STEPS, checkpointSteps=3, loggingSteps=1, zeroStage=3)
    outcome: dict = {}

    def train():
        try:
            outcome["result"] = sfft_train(model_dir=str(tiny_models["llama"]), data_path=str(corpus),
                                           output_dir=str(out_dir), run_dir=str(run_dir), run_name="kill",
                                           options=opts, num_workers=2, cpus_per_worker=1)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            outcome["error"] = e

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    run_path = run_dir / "ray_train" / "kill"
    deadline = time.monotonic() + 300
    while (state := latest_checkpoint_state(str(run_path))) is None:
        assert thread.is_alive(), outcome
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    killed_at = state["step"]
    address = head_info(Workspace.from_env()).dashboard_url
    workers = [a for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000, detail=True)
               if a.class_name == "RayTrainWorker"]
    assert len(workers) == 2, workers
    victim = max(workers, key=lambda a: a.pid)
    os.kill(victim.pid, signal.SIGKILL)
    thread.join(timeout=360)
    assert not thread.is_alive(), "training did not finish after the worker was killed"
    assert "error" not in outcome, outcome.get("error")
    m = outcome["result"]["metrics"]
    print(f"killed a worker (pid {victim.pid}) after the checkpoint at step {killed_at}:", json.dumps(m))
    assert m["steps"] == KILL_STEPS
    assert m["resumed_from_step"] >= killed_at > 0 and m["resumed_from_step"] % 3 == 0
    assert m["tokens"] == (KILL_STEPS - m["resumed_from_step"]) * 4 * 64 * 2
    assert (out_dir / "model.safetensors").is_file()  # ZeRO-3 weights gathered for the export
    assert_no_training_actors_left(address)


def assert_no_training_actors_left(address: str, wait_s: float = 30) -> None:
    """Ray ends the controller and workers once the driver drops their handles (asynchronously)."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + wait_s
    while True:
        alive = [a.class_name for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
                 if a.class_name in ("RayTrainWorker", "TrainController", "SplitCoordinator")]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert alive == []


# -- refused before any worker starts --------------------------------------------------------------------
def _call(tmp_path, tiny_models, data, **opts):
    from byzer_like.train.sfft import sfft_train

    return sfft_train(model_dir=str(tiny_models["llama"]), data_path=str(data), output_dir=str(tmp_path / "out"),
                      run_dir=str(tmp_path / "run"), run_name="bad", options=sfft_options(tiny_models["llama"], **opts),
                      num_workers=2)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ds_config, message", [
    ({"zero_optimization": {"stage": 7}}, "zero_optimization.stage must be an integer 0, 1, 2 or 3, got 7"),
    ({"zero_optimization": {"stage": "2"}}, "zero_optimization.stage must be an integer 0, 1, 2 or 3, got '2'"),
    ({"train_micro_batch_size_per_gpu": "4"}, "train_micro_batch_size_per_gpu must be a positive integer"),
    ({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu must be a positive integer"),
    ({"train_batch_size": 12, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1},
     "train_batch_size is 12, but train_micro_batch_size_per_gpu x gradient_accumulation_steps x workers = 4 x 1 x 2 = 8"),
    ({"zero_optimisation": {"stage": 2}}, "unknown key 'zero_optimisation' that DeepSpeed does not accept; did you mean 'zero_optimization'?"),
    ({"zero_optimization": {"stage": 2, "overlap_com": True}}, "zero_optimization has an unknown key 'overlap_com'"),
    ({"zero_optimization": {"stage": 1, "offload_param": {"device": "cpu"}}}, "offload_param needs ZeRO stage 3"),
    ({"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}}, "offload_optimizer needs ZeRO stage 1, 2 or 3"),
    ({"fp16": True}, "deepspeedConfig.fp16 must be an object"),
    ({"optimizer": {"type": "SGDX"}}, "optimizer.type 'SGDX' is not one DeepSpeed builds"),
    ({"gradient_clipping": "big"}, "gradient_clipping must be a number >= 0"),
    # a monitor that cannot run here: refused on the driver, naming the section and how to turn it off
    ({"wandb": {"enabled": True, "project": "p"}}, 'deepspeedConfig.wandb turns on DeepSpeed\'s wandb monitor, which '
     'needs the wandb package and a network connection to Weights & Biases; wandb is not installed here. Set "wandb": '
     '{"enabled": false}'),
    ({"comet": {"enabled": True}}, 'comet_ml is not installed here. Set "comet": {"enabled": false}'),
    ({"tensorboard": True}, 'deepspeedConfig.tensorboard must be an object such as {"enabled": true}, got True'),
])
def test_bad_deepspeed_config_is_refused_before_workers_start(tmp_path, tiny_models, corpus, ds_config, message):
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        _call(tmp_path, tiny_models, corpus, deepspeedConfig=json.dumps(ds_config))
    assert message in str(e.value)
    assert not (tmp_path / "run").exists() and time.monotonic() - t0 < 5


@pytest.mark.timeout(60)
def test_bad_tables_are_refused_before_workers_start(tmp_path, tiny_models):
    no_text = write_table(tmp_path / "nums.parquet", id=[1, 2, 3], score=[0.5, 0.1, 0.2])
    with pytest.raises(ConfigError, match=r"no string column.*columns found: id \(int64\), score \(double\)"):
        _call(tmp_path, tiny_models, no_text)
    two = write_table(tmp_path / "two.parquet", title=["a", "b"], body=["x", "y"])
    with pytest.raises(ConfigError, match=r"2 string columns.*text_column.*columns found: title \(string\), body \(string\)"):
        _call(tmp_path, tiny_models, two)
    with pytest.raises(ConfigError, match=r"no column 'content' \(textColumn\); columns found: title \(string\), body"):
        _call(tmp_path, tiny_models, two, textColumn="content")
    empty = write_table(tmp_path / "empty.parquet", text=pa_strings([]))
    with pytest.raises(ConfigError, match="is empty"):
        _call(tmp_path, tiny_models, empty)
    one = write_table(tmp_path / "one.parquet", text=["only one row"])
    with pytest.raises(ConfigError, match="fewer than the 2 training workers"):
        _call(tmp_path, tiny_models, one)
    with pytest.raises(ConfigError, match="does not exist"):
        _call(tmp_path, tiny_models, tmp_path / "missing.parquet")
    assert not (tmp_path / "run").exists()
    # the only string column is taken when there is no `text`
    from byzer_like.train.sfft_data import inspect_table

    doc = write_table(tmp_path / "doc.parquet", n=[1, 2], doc=["a b c", "d e"])
    assert inspect_table(str(doc))["text_column"] == "doc" and inspect_table(str(doc))["num_rows"] == 2


def pa_strings(values):
    import pyarrow as pa

    return pa.array(values, type=pa.string())


def test_validate_deepspeed_config_defaults_and_precedence(tiny_models, capsys):
    opts = sfft_options(tiny_models["llama"], zeroStage=1, gradientAccumulationSteps=2)
    cfg = validate_deepspeed_config(None, opts, num_workers=2, on_gpu=False)
    assert cfg["zero_optimization"] == {"stage": 1}
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["train_batch_size"]) == (4, 2, 16)
    assert cfg["fp16"] == {"enabled": False} and cfg["bf16"] == {"enabled": False} and "optimizer" not in cfg

    user = {"zero_optimization": {"stage": 3, "stage3_prefetch_bucket_size": "auto", "reduce_bucket_size": 5e7},
            "train_batch_size": 48, "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "fp16": {"enabled": True}, "gradient_clipping": "auto"}
    cfg = validate_deepspeed_config(user, opts, num_workers=2, on_gpu=False)
    assert cfg["zero_optimization"] == {"stage": 3, "reduce_bucket_size": 50_000_000}  # the user's stage wins
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]) == (4, 6)  # derived
    assert cfg["fp16"] == {"enabled": False} and cfg["gradient_clipping"] == 1.0
    assert "fp16 is not available on CPU" in capsys.readouterr().err
    assert user["zero_optimization"]["stage3_prefetch_bucket_size"] == "auto"  # the input is not modified

    cfg = validate_deepspeed_config({"bf16": {"enabled": "auto"}, "optimizer": {"type": "AdamW", "params": {"lr": "auto"}}},
                                    opts, num_workers=1, on_gpu=True)
    assert cfg["bf16"] == {"enabled": True} and cfg["fp16"] == {"enabled": False}
    assert cfg["optimizer"]["params"]["lr"] == opts.lr()
    with pytest.raises(ConfigError, match="must be a JSON object"):
        validate_deepspeed_config([1], opts, num_workers=1, on_gpu=False)  # type: ignore[arg-type]


def test_worker_errors_become_one_line():
    from ray.train import WorkerGroupError

    from byzer_like.train.sfft import _failure_message

    err = WorkerGroupError("rank 1 failed", {1: ValueError("the tokenizer has no EOS token\nsecond line")})
    assert _failure_message(err) == ("continued pretraining failed on worker rank 1: "
                                     "ValueError: the tokenizer has no EOS token second line")


def test_file_monitors_write_into_the_jobs_folder(tmp_path):
    """DeepSpeed's tensorboard and csv monitors default to the worker's current directory: they are placed in
    <run_dir>/tensorboard/<run name>/ unless the section names its own output_path; wandb is left alone."""
    from byzer_like.train.ds_config import enabled_monitors, place_monitors

    cfg = {"tensorboard": {"enabled": True}, "csv_monitor": {"enabled": True, "output_path": str(tmp_path / "mine")},
           "wandb": {"enabled": False}}
    placed = place_monitors(cfg, str(tmp_path / "run"), "job1")
    assert placed["tensorboard"] == {"enabled": True, "output_path": str(tmp_path / "run" / "tensorboard"),
                                     "job_name": "job1"}
    assert placed["csv_monitor"]["output_path"] == str(tmp_path / "mine") and placed["wandb"] == {"enabled": False}
    assert cfg["tensorboard"] == {"enabled": True}  # the user's config is not changed
    assert enabled_monitors(placed) == ["tensorboard", "csv_monitor"]
