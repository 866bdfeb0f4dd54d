"""Pre-flight of training jobs on the driver (`train.preflight`): the workers against the cluster's nodes, the
packages and devices an option needs, deepspeedConfig paths, sfft's num_gpus as the total number of cards, and
sft's default method. The checks are pure functions of (options, setup, environment), so the environment is
injected here: no Ray, no GPU. Two tests go through `Jobs.submit` itself, still without a cluster."""
from __future__ import annotations

import pyarrow as pa
import pytest

from byzer_like import tasks
from byzer_like.catalog import Catalog
from byzer_like.config import SetupConfig
from byzer_like.errors import (
    ClusterError, ClusterTooSmallError, ConfigError, DeviceNotAvailableError, MissingPackageError, WorkspacePathError,
)
from byzer_like.train.options import SfftOptions, SftOptions
from byzer_like.train.preflight import (
    Environment, check_devices, check_packages, check_paths, check_resources, preflight, settle_method,
)
from byzer_like.workspace import Workspace

SFT, SFFT = tasks.get("sft"), tasks.get("sfft")
ALL = lambda module: True  # noqa: E731 - every package installed
TOOLS = lambda name: True  # noqa: E731 - every tool on PATH


def _missing(*modules: str):
    return lambda module: module not in modules


def sft(**kw) -> SftOptions:
    return SftOptions.from_params({"pretrainedModelType": "sft/llama", "localModelDir": "m", **kw})


def sfft(ds: dict | None = None, **kw) -> SfftOptions:
    import json

    extra = {"deepspeedConfig": json.dumps(ds)} if ds is not None else {}
    return SfftOptions.from_params({"pretrainedModelType": "sfft/llama", "localModelDir": "m", **extra, **kw})


def setup(**values) -> SetupConfig:
    return SetupConfig().with_values(values)


# -- sfft's num_gpus: the total number of cards ----------------------------------------------------------------------
@pytest.mark.parametrize("values, workers, per_worker", [
    ({"num_gpus": "12"}, 12, 1.0),                                  # the seed's `!byzerllm setup "num_gpus=12"`
    ({"num_gpus": "12", "gpus_per_worker": "4"}, 3, 4.0),           # cards per worker given
    ({"num_gpus": "4", "num_workers": "4"}, 4, 1.0),                # both, agreeing
    ({"num_gpus": "0", "num_workers": "2"}, 2, 0.0),                # CPU: num_workers as given
    ({"num_workers": "3"}, 3, 0.0),
])
def test_sfft_reads_num_gpus_as_the_total_number_of_cards(values, workers, per_worker):
    settled = setup(**values).for_task(SFFT)
    assert (settled.num_workers, settled.gpus_per_worker) == (workers, per_worker)
    # the job's stored setup reads back the same, and settling it again changes nothing (a resume)
    again = SetupConfig.from_sys_conf(settled.sys_conf())
    assert (again.num_workers, again.gpus_per_worker) == (workers, per_worker)
    assert again.for_task(SFFT).num_workers == workers


def test_num_gpus_keeps_its_per_worker_meaning_for_deployments_and_sft():
    s = setup(num_gpus="2", num_workers="3")
    assert (s.num_workers, s.gpus_per_worker) == (3, 2.0)  # a deployment: 3 replicas of 2 GPUs
    assert s.for_task(SFT) is s and s.sys_conf()["num_gpus"] == "2.0"
    assert setup(gpus_per_worker="1").with_values({"num_gpus": "2"}).gpus_per_worker == 2.0  # the later one


@pytest.mark.parametrize("values, message", [
    ({"num_gpus": "5", "gpus_per_worker": "2"}, r"num_gpus=5 .* gpus_per_worker=2 that is 2.5 workers"),
    ({"num_gpus": "4", "gpus_per_worker": "0"}, r"gpus_per_worker is 0"),
])
def test_sfft_cards_that_do_not_split_into_workers_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        setup(**values).for_task(SFFT)


def test_sfft_num_gpus_decides_over_a_num_workers_set_for_an_earlier_deploy():
    """Byzer's notebooks set maxConcurrency for a deploy, then `setup sfft` and `num_gpus=12`: 12 workers."""
    settled = setup(maxConcurrency="1").with_values({"mode": "sfft", "num_gpus": "4"}).for_task(SFFT)
    assert settled.num_workers == 4 and settled.gpus_per_worker == 1.0


# -- the workers against the cluster -----------------------------------------------------------------------------
@pytest.mark.parametrize("task, values, nodes", [
    (SFT, {"cpus_per_worker": "1"}, [{"CPU": 4.0}]),
    (SFT, {"num_gpus": "2"}, [{"CPU": 8.0, "GPU": 2.0}]),
    (SFFT, {"num_gpus": "8"}, [{"CPU": 8.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 4.0}]),
    (SFFT, {"num_workers": "4", "cpus_per_worker": "2"}, [{"CPU": 8.0}]),
    (SFFT, {"num_gpus": "12"}, None),  # nodes unknown: not checked
])
def test_jobs_that_fit_the_cluster_pass(task, values, nodes):
    check_resources(task, setup(**values).for_task(task), Environment(nodes=nodes))


@pytest.mark.parametrize("task, values, nodes, message", [
    # the seed's sfft on a cluster of 8 cards: 12 workers of 1 GPU cannot all start
    (SFFT, {"num_gpus": "12"}, [{"CPU": 16.0, "GPU": 8.0}],
     r"sfft needs 12 worker\(s\) of 1 CPU / 1 GPU each \(12 CPUs, 12 GPUs in all\); the cluster has 16 CPUs and "
     r"8 GPUs on 1 node\(s\) .* room for 8, so Ray would queue the job forever; lower num_gpus"),
    # 12 CPUs in all, but no node holds two workers of 4
    (SFFT, {"num_workers": "3", "cpus_per_worker": "4"}, [{"CPU": 6.0}, {"CPU": 6.0}],
     r"3 worker\(s\) of 4 CPU .* 12 CPUs and 0 GPUs on 2 node\(s\) .* room for 2"),
    # sft trains in one process: its GPUs must be on one node
    (SFT, {"num_gpus": "4"}, [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 2.0}],
     r"sft trains in one process, on one node: it needs 1 CPU\(s\) and 4 GPU\(s\) there; the cluster has 16 CPUs "
     r"and 4 GPUs on 2 node\(s\) \(largest node: 8 CPUs, 2 GPUs\)"),
])
def test_jobs_larger_than_the_cluster_fail_at_once_naming_the_numbers(task, values, nodes, message):
    with pytest.raises(ClusterTooSmallError, match=message) as e:
        check_resources(task, setup(**values).for_task(task), Environment(nodes=nodes))
    assert e.value.need["CPU"] > 0 and e.value.have["CPU"] == sum(n["CPU"] for n in nodes)


def test_gpus_asked_of_a_cluster_without_gpus_name_the_option_and_the_cpu_way():
    env = Environment(nodes=[{"CPU": 8.0}], installed=ALL, has_tool=TOOLS)
    with pytest.raises(DeviceNotAvailableError, match=r'sfft asks for 2 GPUs \(2 workers of 1\), but this cluster '
                       r'has no GPU \(8 CPUs on 1 node\(s\)\); train on CPU with !byzerllm setup "num_gpus=0"') as e:
        preflight(SFFT, sfft(), setup(num_gpus="2"), env)
    assert e.value.option == "num_gpus"


# -- sft's method: Byzer's qlora where a CUDA GPU is, lora otherwise ------------------------------------------------
GPU_NODE, CPU_NODE = [{"CPU": 8.0, "GPU": 1.0}], [{"CPU": 8.0}]


@pytest.mark.parametrize("options, values, nodes, installed, method, reason", [
    (sft(), {"num_gpus": "1"}, GPU_NODE, ALL, "qlora", "Byzer's default for sft on a CUDA GPU"),
    (sft(), {"num_gpus": "1"}, GPU_NODE, _missing("bitsandbytes"), "lora", "needs bitsandbytes, not installed here"),
    (sft(), {}, GPU_NODE, ALL, "lora", 'this job reserves none: !byzerllm setup "num_gpus=1" trains qlora on one'),
    (sft(), {}, CPU_NODE, ALL, "lora", "qlora needs a CUDA GPU; none here"),
    (sft(), {}, None, ALL, "lora", "qlora needs a CUDA GPU; none here"),
    (sft(method="qlora"), {}, CPU_NODE, ALL, "qlora", None),  # named: kept (bitsandbytes' CPU back end trains it)
    (sft(method="full"), {"num_gpus": "1"}, GPU_NODE, ALL, "full", None),
])
def test_sft_without_a_method_trains_qlora_on_a_gpu_and_lora_elsewhere(options, values, nodes, installed, method,
                                                                        reason):
    settled, chosen, why = settle_method(SFT, options, setup(**values), Environment(nodes=nodes, installed=installed))
    assert settled.method == chosen == method
    assert (why is None) if reason is None else (reason in why)


def test_the_plan_says_the_method_and_why():
    plan = preflight(SFT, sft(), setup(), Environment(nodes=CPU_NODE, installed=ALL, has_tool=TOOLS))
    assert plan.options.method == "lora" and plan.method_text() == "lora (qlora needs a CUDA GPU; none here)"
    assert preflight(SFFT, sfft(), setup(), Environment(nodes=CPU_NODE, installed=ALL)).method_text() == "full"  # sfft: every weight unless method="lora"


def test_sfft_plan_says_how_num_gpus_became_workers():
    plan = preflight(SFFT, sfft(), setup(num_gpus="4"), Environment(nodes=[{"CPU": 8.0, "GPU": 4.0}], installed=ALL))
    assert (plan.setup.num_workers, plan.setup.gpus_per_worker) == (4, 1.0)
    assert plan.notes == ("num_gpus=4 is the total number of cards for sfft: 4 worker(s) of 1 GPU each",)


# -- packages and tools ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task, options, missing, package, message", [
    (SFT, sft(method="qlora"), "bitsandbytes", "bitsandbytes",
     r'sft with method="qlora" needs the bitsandbytes package, which is not installed here: pip install bitsandbytes '
     r'\(or method="lora"\)'),
    (SFT, sft(method="lora"), "peft", "peft", r'method="lora" needs the peft package.*pip install peft'),
    (SFFT, sfft(), "deepspeed", "deepspeed", r"sfft needs the deepspeed package.*pip install deepspeed"),
    (SFT, sft(method="full"), "torch", "torch", r"sft needs the torch package"),
])
def test_a_package_an_option_needs_is_named_with_its_install_command(task, options, missing, package, message):
    with pytest.raises(MissingPackageError, match=message) as e:
        check_packages(task, options, Environment(installed=_missing(missing), has_tool=TOOLS))
    assert e.value.package == package


def test_full_fine_tuning_needs_no_peft():
    check_packages(SFT, sft(method="full"), Environment(installed=_missing("peft", "bitsandbytes"), has_tool=TOOLS))


@pytest.mark.parametrize("ds, installed, tools, message", [
    ({"optimizer": {"type": "AdamW"}}, _missing("ninja"), lambda t: t != "ninja",
     r"deepspeedConfig.optimizer.type 'AdamW' is a DeepSpeed C\+\+ op compiled on first use, which needs ninja.*"
     r'pip install ninja; or leave "optimizer" out'),
    ({"optimizer": {"type": "Adam"}}, ALL, lambda t: t not in ("c++", "g++", "clang++"),
     r"needs a C\+\+ compiler \(c\+\+\)"),
    ({"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "nv"}}}, ALL,
     lambda t: t != "libaio", r'offload_param.device "nvme" needs DeepSpeed\'s async_io op, which needs libaio'),
])
def test_deepspeed_options_needing_something_absent_are_refused_before_submit(ds, installed, tools, message):
    with pytest.raises(MissingPackageError, match=message):
        check_packages(SFFT, sfft(ds), Environment(installed=installed, has_tool=tools))


def test_torch_adam_and_no_optimizer_need_no_compiler():
    none = Environment(installed=_missing("ninja"), has_tool=lambda t: False)
    check_packages(SFFT, sfft({"optimizer": {"type": "AdamW", "params": {"torch_adam": True}}}), none)
    check_packages(SFFT, sfft({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}), none)


# -- devices -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ds, values, refused", [
    ({"optimizer": {"type": "Lamb"}}, {}, True),
    ({"optimizer": {"type": "OneBitAdam"}}, {}, True),
    ({"optimizer": {"type": "Lion"}}, {}, True),
    ({"optimizer": {"type": "Lion"}, "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}},
     {}, False),  # DeepSpeedCPULion
    ({"optimizer": {"type": "Lamb"}}, {"num_gpus": "1"}, False),
    ({"optimizer": {"type": "AdamW"}, "bf16": {"enabled": True}}, {}, False),  # bf16 is switched off on CPU, noted
])
def test_cuda_only_deepspeed_optimizers_on_a_cpu_job_name_the_option_and_what_to_use(ds, values, refused):
    s = setup(**values).for_task(SFFT)
    if not refused:
        check_devices(SFFT, sfft(ds), s)
        return
    with pytest.raises(DeviceNotAvailableError, match=r"deepspeedConfig.optimizer.type '\w+' runs only on CUDA GPUs, "
                       r'and this sfft job has none \(num_gpus=0\); use "AdamW" or leave "optimizer" out') as e:
        check_devices(SFFT, sfft(ds), s)
    assert e.value.option == "deepspeedConfig.optimizer.type"


# -- paths in a deepspeedConfig ----------------------------------------------------------------------------------
def test_deepspeed_config_paths_must_lie_inside_the_allowed_roots(tmp_path, monkeypatch):
    monkeypatch.delenv("BYZER_LIKE_ALLOWED_ROOTS", raising=False)
    ws = Workspace.from_env(tmp_path / "ws")
    inside = {"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "swap"}},
              "tensorboard": {"enabled": True, "output_path": "tb"}}
    check_paths(sfft(inside), ws.resolve)
    outside = {"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme", "nvme_path": "/etc/swap"}}}
    with pytest.raises(WorkspacePathError, match="offload_param.nvme_path"):
        check_paths(sfft(outside), ws.resolve)
    with pytest.raises(WorkspacePathError, match="csv_monitor.output_path"):
        check_paths(sfft({"csv_monitor": {"enabled": True, "output_path": "/etc"}}), ws.resolve)


# -- through Jobs.submit, without a cluster ------------------------------------------------------------------------
@pytest.fixture
def rt(tmp_path):
    """The session tests' fake runtime (tests/fake_runtime.py) over a workspace with data/q.jsonl."""
    import json

    from fake_runtime import FakeRuntime

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "q.jsonl").write_text("".join(json.dumps({"instruction": f"q{i}", "output": "a"}) + "\n"
                                                       for i in range(3)))
    return FakeRuntime(str(tmp_path))


QA = pa.table({"instruction": [f"q{i}?" for i in range(4)], "output": [f"a{i}" for i in range(4)]})


def test_submit_checks_the_cluster_before_recording_anything(tmp_path, tiny_models, monkeypatch):
    from byzer_like import cluster
    from byzer_like.train.jobs import Jobs

    monkeypatch.setenv("BYZER_LIKE_ALLOWED_ROOTS", str(tiny_models["llama"].parent))
    monkeypatch.setattr(cluster, "node_resources", lambda: [{"CPU": 2.0}])  # a CPU-only cluster of 2 CPUs
    ws = Workspace.from_env(tmp_path)
    connected = []
    jobs = Jobs(ws, setup=setup(num_gpus="1"), connect=lambda: connected.append(True))
    opts = SFT.parse_options({"pretrainedModelType": "sft/llama", "localModelDir": str(tiny_models["llama"])})
    with pytest.raises(DeviceNotAvailableError, match="sft asks for 1 GPU"):
        jobs.submit(SFT, opts, {}, QA)
    jobs = Jobs(ws, setup=setup(cpus_per_worker="4"), connect=lambda: connected.append(True))
    with pytest.raises(ClusterTooSmallError, match=r"it needs 4 CPU\(s\) and 0 GPU\(s\) there; the cluster has 2 CPUs"):
        jobs.submit(SFT, opts, {}, QA)
    assert connected and Catalog(ws).jobs() == [] and not (tmp_path / "jobs").exists()


def test_the_job_row_says_which_method_trains_and_why(tmp_path, tiny_models, monkeypatch):
    from byzer_like.train.jobs import Jobs

    monkeypatch.setenv("BYZER_LIKE_JOBS_ADDRESS", "http://127.0.0.1:9")  # nothing listens: the job cannot start
    monkeypatch.setenv("BYZER_LIKE_ALLOWED_ROOTS", str(tiny_models["llama"].parent))
    ws = Workspace.from_env(tmp_path)
    jobs = Jobs(ws, setup=setup())
    opts = SFT.parse_options({"pretrainedModelType": "sft/llama", "localModelDir": str(tiny_models["llama"]),
                              "detached": "true"})
    with pytest.raises(ClusterError, match="cannot reach the Ray Jobs API"):
        jobs.submit(SFT, opts, {}, QA)
    (row,) = jobs.list()
    assert row["method"] == "lora (qlora needs a CUDA GPU; none here)"
    assert Catalog(ws).jobs()[0]["options"]["method"] == "lora"  # what the runner trains


def test_the_sql_result_says_the_method(s, rt):
    out = s.sql("""load json.`data/q.jsonl` as data;
        !byzerllm setup sft;
        run command as LLM.`` where pretrainedModelType="llama" and localModelDir="m" and inputTable="data";""")
    assert out[-1].message == "job sft-job-1: SUCCEEDED (method: lora)"
    assert out[-1].table.column("method").to_pylist() == ["lora"]


def test_setup_says_what_num_gpus_means_for_sfft(s):
    s.sql("!byzerllm setup sfft;")
    (out,) = s.sql('!byzerllm setup "num_gpus=12";')
    assert out.message == ("num_gpus=12 (note: num_gpus is the total number of cards for sfft: 12 worker(s) of 1 GPU "
                           "each)")
