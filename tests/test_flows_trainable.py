"""TrainableModule on the cluster (tiny llama): update() runs a real sft job, registers and deploys the model and
answers its evalset; a second update() with the same inputs runs no job; the module is a stage of a flow, and two
modules of a parallel train and serve apart."""
import pytest

from byzer_like.errors import ConfigError, StageError
from byzer_like.flows import ModuleBase, TrainableModule, parallel, pipeline

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

ROWS = [{"instruction": f"colour {i}?", "output": ["red", "blue"][i % 2]} for i in range(8)]
OPTIONS = {"maxSteps": "4", "batchSize": "4", "learningRate": "1e-3", "sft.int.max_seq_length": "32"}


def _jobs(llm) -> int:
    return len(llm.jobs.list())


def test_update_trains_registers_deploys_and_answers_then_skips_an_unchanged_job(llm, tiny_models):
    m = (TrainableModule(tiny_models["llama"], "flow_qa", session=llm).trainset(ROWS)
         .finetune_method("sft", **OPTIONS).evalset(["colour 1?", "colour 2?"]))
    try:
        before = _jobs(llm)
        m.update()
        assert m.job["state"] == "SUCCEEDED" and m.job["kind"] == "sft", m.job
        assert _jobs(llm) == before + 1
        entry = llm.catalog.model("flow_qa")
        assert entry.kind == "adapter" and entry.job_id == m.job["job_id"]
        assert llm.is_model_exist("flow_qa")
        assert len(m.eval_result) == 2 and all(isinstance(a, str) for a in m.eval_result), m.eval_result

        # the same inputs again: no job, the same registry version, deployed and answering
        m.update()
        assert m.job is None and _jobs(llm) == before + 1 and llm.catalog.model("flow_qa").version == entry.version
        assert isinstance(m("colour 3?"), str)

        # a changed option is a new job and a new version
        m.finetune_method("sft", **{**OPTIONS, "maxSteps": "2"}).update()
        assert m.job["state"] == "SUCCEEDED" and llm.catalog.model("flow_qa").version == entry.version + 1

        # a stage of a flow: its input is the question
        flow = pipeline(lambda q: q.strip(), m, lambda a: len(a))
        assert isinstance(flow("  colour 4?  "), int)
        with pytest.raises(StageError, match=r"stage root\.\[1\]|TrainableModule|flow_qa"):
            pipeline(lambda q: {"q": q}, m)("x")
    finally:
        if llm.is_model_exist("flow_qa"):
            llm.undeploy("flow_qa")


def test_modules_of_a_parallel_on_one_base_train_and_answer_apart(llm, tiny_models):
    class TwoTunes(ModuleBase):
        def __init__(self):
            super().__init__()
            self.a = TrainableModule(tiny_models["llama"], "flow_a", session=llm).trainset(ROWS) \
                .finetune_method("sft", **OPTIONS)
            self.b = TrainableModule(tiny_models["llama"], "flow_b", session=llm).trainset(ROWS[::-1]) \
                .finetune_method("sft", **OPTIONS)
            self.flow = parallel(self.a, self.b)

        def forward(self, q):
            return self.flow(q)

    top = TwoTunes()
    try:
        assert {id(x) for x in top.submodules} == {id(top.a), id(top.b)}
        top.update()
        a, b = top("colour 5?")
        assert isinstance(a, str) and isinstance(b, str)
        assert llm.catalog.model("flow_a").job_id != llm.catalog.model("flow_b").job_id
        assert "<Module type=Trainable name=flow_a base=" in repr(top) and "name=flow_b" in repr(top)
    finally:
        for n in ("flow_a", "flow_b"):
            if llm.is_model_exist(n):
                llm.undeploy(n)


def test_an_unknown_task_is_refused_naming_the_tasks(tiny_models):
    with pytest.raises(ConfigError, match="unknown training task 'spft'.*sft, sfft, dpo"):
        TrainableModule(tiny_models["llama"], "x").finetune_method("spft")
