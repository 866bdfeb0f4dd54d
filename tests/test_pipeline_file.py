"""Pipeline files (byzer_like/flows/pipeline_file.py): llm-module's config file (INI) and its YAML form read with
each key's line, one schema's errors (every kind, with its line), the key mapping and its warnings, the compiled
SQL checked by the dialect's parser and the whole-script check, the CLI's `pipeline run --dry-run` / `explain`,
and end to end on a tiny llama (Ray) and on SmolLM2 (`-m real_model`)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from byzer_like.flows import pipeline_file as P
from byzer_like.sql import Command, Load, Run, Select, parse_script

QA = [{"instruction": f"favorite color of {n}?", "input": "", "output": c}
      for n, c in zip(("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"),
                      ("red", "blue", "green", "yellow", "purple", "orange", "black", "white"))]

# shaped like llm-module's example/trainer.ini (the seed's config file), pointed at a local model and data file
SEED = """\
[Project]
name={name}
version=1.0
user=test
proxies={{"http": "127.0.0.1:7890", "https": "127.0.0.1:7890"}}
pipeline=Trainer,Export,Chat

[TokenizerLoader]
pretrained_model_name_or_path={model}
use_fast=True
;split_special_tokens=True
trust_remote_code=True

[ModelLoader]
class=transformers.AutoModel
pretrained_model_name_or_path={model}
model_type=llama
print_model_structure=False
trust_remote_code=True
use_gradient_checkpointing=False
model_max_length=2000
quantization_type=
finetune_args=FinetuneArguments

[FinetuneArguments]
type=lora
checkpoint_dir=
lora_config_task_type=CAUSAL_LM
lora_config_inference_mode=False
lora_config_r=8
lora_config_lora_alpha=16
lora_config_lora_dropout=0.0
lora_config_target_modules=q_proj,v_proj

[TrainingArguments]
class=transformers.Seq2SeqTrainingArguments
per_device_train_batch_size=4
gradient_accumulation_steps=1
max_steps={max_steps}
learning_rate=1e-4
logging_steps=1
output_dir=./output_train
seed=2023

[GenerateArguments]
do_sample=False
num_beams=1
max_new_tokens=8

[Trainer]
class=transformers.Seq2SeqTrainer
model=ModelLoader
tokenizer=TokenizerLoader
args=TrainingArguments
dataset=DatasetLoader_1
plot_loss=True
steps=train,eval,predict
generate_args=GenerateArguments
stage=sft

[DatasetLoader_1]
path=json
data_files={data}
prompt_column=question
query_column=context
response_column=answer
split=train
tokenizer=TokenizerLoader
cutoff_len=64
label_mask_prompt=True

[Export]
tokenizer=TokenizerLoader
model=ModelLoader
output_dir=./export/lora

[Chat]
tokenizer=TokenizerLoader
model=Export
generating_args=GenerateArguments
questions={questions}
"""


def seed_file(folder: Path, *, name: str = "myLLM", model: str = "models/tiny", max_steps: int = 2,
              questions: str = '["favorite color of bob?", "favorite color of erin?"]', suffix: str = ".ini") -> Path:
    """The seed-shaped file in `folder`, with its data file (columns question, context, answer) beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data" / "qa.jsonl"
    data.parent.mkdir(exist_ok=True)
    data.write_text("".join(json.dumps({"question": r["instruction"], "context": r["input"], "answer": r["output"]}) + "\n"
                            for r in QA))
    f = folder / f"pipeline{suffix}"
    f.write_text(SEED.format(name=name, model=model, max_steps=max_steps, data="data/qa.jsonl", questions=questions))
    return f


def problems_of(text: str, tmp_path: Path, suffix: str = ".ini") -> list[str]:
    f = tmp_path / f"bad{suffix}"
    f.write_text(textwrap.dedent(text))
    with pytest.raises(P.PipelineFileError) as e:
        P.compile_path(f)
    return [str(p).replace(str(f), "F") for p in e.value.problems]


MINIMAL = """\
[Project]
name=m
pipeline=Trainer
[ModelLoader]
pretrained_model_name_or_path=models/tiny
[DatasetLoader_1]
data_files=data/qa.jsonl
[Trainer]
model=ModelLoader
dataset=DatasetLoader_1
"""


@pytest.mark.timeout(30)
def test_the_seed_file_is_read_with_kinds_references_typed_values_and_lines(tmp_path):
    pf = P.load(seed_file(tmp_path))
    assert pf.project.name == "myLLM" and pf.project.pipeline == ["Trainer", "Export", "Chat"]
    assert P.kind_of("DatasetLoader_1") == "DatasetLoader" and P.kind_of("Trainer_ppo") == "Trainer"
    ds = pf.sections["DatasetLoader_1"]
    assert ds.kind == "DatasetLoader" and ds.line == 61 and ds.lines["cutoff_len"] == 69
    trainer = pf.sections["Trainer"]
    assert trainer.steps == ["train", "eval", "predict"] and trainer.stage == "sft"
    assert trainer.refs == {"model": "ModelLoader", "tokenizer": "TokenizerLoader", "args": "TrainingArguments",
                            "dataset": "DatasetLoader_1", "generate_args": "GenerateArguments"}
    assert pf.sections["FinetuneArguments"].type == "lora"
    assert pf.sections["ModelLoader"].refs == {"finetune_args": "FinetuneArguments"}
    assert [s.section for s in pf.stages()] == ["Trainer", "Export", "Chat"]


@pytest.mark.timeout(30)
def test_the_yaml_form_of_the_same_model_compiles_to_the_same_sql(tmp_path):
    ini = P.compile_path(seed_file(tmp_path))
    sections = {}
    for name, s in P.read(seed_file(tmp_path)).sections.items():
        sections[name] = {k: v.value for k, v in s.values.items() if v.value != ""}
    sections["Project"]["pipeline"] = ["Trainer", "Export", "Chat"]
    sections["Trainer"]["steps"] = ["train", "eval", "predict"]
    sections["Chat"]["questions"] = ["favorite color of bob?", "favorite color of erin?"]
    import yaml

    y = tmp_path / "pipeline.yaml"
    y.write_text(yaml.safe_dump(sections, sort_keys=False))
    from_yaml = P.compile_path(y)
    body = lambda c: [x for x in c.sql.splitlines() if not x.startswith("--")]  # noqa: E731 - comments name lines
    assert body(from_yaml) == body(ini)
    # YAML keeps lines too: an unknown key is said at its own line
    y.write_text("Project:\n  name: m\n  pipeline: [Chat]\nChat:\n  questions: [hi]\n  bogus: 1\n")
    with pytest.raises(P.PipelineFileError, match=r"pipeline.yaml:6 \[Chat\] bogus: unknown key for a Chat section"):
        P.compile_path(y)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("change, expected", [
    # an unknown section type, with the types
    ("[Trainr]\nstage=sft\n", r"F:12 \[Trainr\]: unknown section type 'Trainr'; did you mean 'Trainer'\? types: "),
    # a reference to a missing section
    ("[Export]\nmodel=ModelLoadr\n", r"F:13 \[Export\] model: refers to \[ModelLoadr\], which is not in the file; did you mean 'ModelLoader'"),
    # a reference to a section of the wrong kind
    ("[Export]\nmodel=DatasetLoader_1\n", r"F:13 \[Export\] model: refers to \[DatasetLoader_1\], a DatasetLoader; it names a ModelLoader or Trainer or Export"),
    # an unknown key, with the valid ones
    ("[Chat]\nmodel=ModelLoader\nquestons=hi\n", r"F:14 \[Chat\] questons: unknown key for a Chat section; did you mean 'questions'\? valid keys: .*generating_args.*udf_name"),
    # a bad value
    ("[FinetuneArguments]\ntype=lorra\n", r"F:13 \[FinetuneArguments\] type: Input should be 'full', 'freeze', 'lora', 'qlora' or 'prefix'"),
    # stages this project has no task for, exports it cannot write
    ("[Deploy]\nnum_workers=0\n", r"F:13 \[Deploy\] num_workers: Input should be greater than or equal to 1"),
    ("[Export]\ntype=gguf\n", r"F:13 \[Export\] type: GGUF export is not available here"),
    # syntax
    ("[Chat]\nthis line is no key\n", r"F:13 \[Chat\]: not `key=value`"),
    ("[Chat]\nudf_name=a\nudf_name=b\n", r"F:14 \[Chat\] udf_name: given twice \(first at line 13\)"),
    ("[Trainer]\nstage=x\n", r"F:12 \[Trainer\]: section given twice \(first at line 8\)"),
])
def test_every_error_is_said_at_its_line(tmp_path, change, expected):
    got = problems_of(MINIMAL + "\n" + change, tmp_path)
    assert any(__import__("re").match(expected, p) for p in got), got


@pytest.mark.timeout(30)
def test_an_unknown_stage_a_cycle_and_a_stage_that_runs_too_late_are_refused_with_lines(tmp_path):
    ppo = problems_of(MINIMAL.replace("dataset=DatasetLoader_1", "dataset=DatasetLoader_1\nstage=grpo"), tmp_path)
    assert ppo == ["F:11 [Trainer] stage: unknown stage 'grpo'; stages: dpo, kto, orpo, ppo, pt, rm, sft"]
    cycle = problems_of("""\
        [Project]
        name=m
        pipeline=Export
        [Export]
        model=Export_2
        [Export_2]
        model=Export
        """, tmp_path)
    assert "F:7 [Export_2] model: a cycle of references: Export -> Export_2 -> Export" in cycle, cycle
    late = problems_of("""\
        [Project]
        name=m
        pipeline=Chat,Export
        [ModelLoader]
        pretrained_model_name_or_path=smollm2
        [Export]
        model=ModelLoader
        [Chat]
        model=Export
        """, tmp_path)
    assert late == ["F:9 [Chat] model: [Export] does not run before [Chat] (pipeline=Chat,Export)"]


@pytest.mark.timeout(30)
def test_every_problem_of_a_file_is_said_at_once_before_anything_runs(tmp_path):
    got = problems_of("""\
        [Project]
        name=m
        pipeline=Trainer,Missing
        [Thing]
        a=1
        [Trainer]
        model=ModelLoader
        dataset=DatasetLoader_1
        stage=sft
        steps=eval
        """, tmp_path)
    lines = [int(p.split(":")[1].split()[0]) for p in got]
    assert lines == sorted(lines) and len(got) >= 5, got
    text = "\n".join(got)
    for needle in ("F:3 [Project] pipeline: names [Missing]", "F:4 [Thing]: unknown section type",
                   "F:7 [Trainer] model: refers to [ModelLoader]", "F:8 [Trainer] dataset: refers to [DatasetLoader_1]",
                   "F:10 [Trainer] steps: steps must include train"):
        assert needle in text, got


@pytest.mark.timeout(30)
def test_keys_map_onto_this_projects_options_and_keys_with_no_meaning_are_warnings(tmp_path):
    c = P.compile_path(seed_file(tmp_path))
    train = next(s for s in parse_script(c.sql, {})
                 if isinstance(s, Run) and s.options.get("pretrainedModelType") == "sft/llama")
    for key, value in {"loraR": "8", "loraAlpha": "16", "loraDropout": "0.0", "loraTargetModules": "q_proj,v_proj",
                       "method": "lora", "perDeviceBatchSize": "4", "maxSteps": "2", "learningRate": "1e-4",
                       "loggingSteps": "1", "seed": "2023", "maxSeqLength": "64", "gradientCheckpointing": "False",
                       "predictTable": "DatasetLoader_1", "predictMaxNewTokens": "8", "outputTable": "myLLM"}.items():
        assert train.options[key] == value, (key, train.options)
    # the DatasetLoader's columns as a select
    assert "select `question` as instruction, `context` as input, `answer` as output from DatasetLoader_1_raw" in c.sql
    # GenerateArguments as the chat's request keys (do_sample=False: greedy)
    assert "map('instruction', question, 'temperature', 0.0, 'max_new_tokens', 8)" in c.sql
    warned = {w.split("] ", 1)[1].split(":")[0] for w in c.warnings}
    assert {"version", "user", "proxies", "use_fast", "trust_remote_code", "class", "print_model_structure",
            "model_max_length", "lora_config_task_type", "lora_config_inference_mode", "output_dir", "plot_loss",
            "num_beams", "split", "label_mask_prompt"} <= warned, c.warnings
    assert all(": no meaning here: " in w or "nothing to merge" in w for w in c.warnings)
    # an empty value is not given (no warning); each warning names its line
    assert "quantization_type" not in warned and "checkpoint_dir" not in warned
    assert any(w.endswith("] output_dir: no meaning here: a job writes into its folder in the workspace (jobs/<id>/); "
                          "models and their files are registered in the workspace's registry, under [Project] name")
               and ":42 " in w for w in c.warnings), c.warnings


@pytest.mark.timeout(30)
def test_a_training_tasks_own_keys_pass_and_a_key_it_does_not_take_is_an_error_listing_the_valid_ones(tmp_path):
    f = seed_file(tmp_path)
    text = f.read_text().replace("seed=2023", "seed=2023\nevalMetrics=exact_match,token_f1\nwarmup_ratio=0.1")
    f.write_text(text)
    c = P.compile_path(f)
    assert 'evalMetrics="exact_match,token_f1"' in c.sql and 'warmupRatio="0.1"' in c.sql
    f.write_text(text.replace("max_steps=2", "max_stpes=2"))
    with pytest.raises(P.PipelineFileError) as e:
        P.compile_path(f)
    (problem,) = e.value.problems
    assert (problem.line, problem.section, problem.key) == (39, "TrainingArguments", "max_stpes")
    assert "did you mean 'max_steps'?" in problem.message and "valid keys:" in problem.message
    assert "maxSeqLength" in problem.message and "per_device_train_batch_size" in problem.message
    # a value the task's options model refuses, at the line that set it
    f.write_text(text.replace("learning_rate=1e-4", "learning_rate=7"))
    with pytest.raises(P.PipelineFileError, match=r"pipeline.ini:40 \[TrainingArguments\] learning_rate: .*less than 1"):
        P.compile_path(f)


@pytest.mark.timeout(60)
def test_the_dry_run_sql_parses_and_passes_the_whole_script_check(tmp_path):
    from byzer_like.session import Session
    from byzer_like.session.check import check_script
    from fake_runtime import FakeRuntime

    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "config.json").write_text("{}")
    (tmp_path / "questions.txt").write_text("favorite color of bob?\n\nfavorite color of erin?\n")
    c = P.compile_path(seed_file(tmp_path, questions="questions.txt"))
    statements = parse_script(c.sql, {})
    kinds = [type(s).__name__ for s in statements]
    assert kinds == ["Load", "Select", "Command", "Run", "Command", "Run", "Run", "Run", "Load", "Select", "Select"]
    assert f"load text.`{tmp_path / 'questions.txt'}` as Chat_questions_raw;" in c.sql
    assert 'action="merge"' in c.sql and 'action="eval"' in c.sql and 'action="infer"' in c.sql
    session = Session(FakeRuntime(str(tmp_path)), progress=False)
    try:
        check_script(session, statements)
    finally:
        session.close()
    assert isinstance(statements[0], Load) and isinstance(statements[2], Command) and isinstance(statements[-1], Select)


@pytest.mark.timeout(30)
def test_explain_prints_the_stage_graph(tmp_path):
    c = P.compile_path(seed_file(tmp_path))
    text = P.explain(c)
    assert text.splitlines()[1].startswith("1. [Trainer] Trainer: sft (lora) -> registers myLLM; eval (exact_match)")
    assert "2. [Export] Export: merge myLLM (registered) -> registers myLLM (its next version)" in text
    assert "3. [Chat] Chat: deploy myLLM (registered) as myLLM_chat; answers 2 questions" in text
    assert "     dataset        <- [DatasetLoader_1]" in text and "warnings (" in text


@pytest.mark.timeout(60)
def test_cli_dry_run_prints_the_sql_explain_the_graph_and_a_bad_file_its_lines(tmp_path, capsys):
    from byzer_like import cli

    f = seed_file(tmp_path)
    assert cli.main(["pipeline", "run", str(f), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert out == P.compile_path(f).sql and "warning: " in err and "[Project] version: no meaning here" in err
    assert cli.main(["pipeline", "explain", str(f)]) == 0
    assert "1. [Trainer] Trainer: sft (lora)" in capsys.readouterr().out
    f.write_text(f.read_text().replace("stage=sft", "stage=grpo"))
    assert cli.main(["pipeline", "run", str(f)]) == 1
    err = capsys.readouterr().err
    assert f"{f}:59 [Trainer] stage: unknown stage 'grpo'; stages: dpo, kto, orpo, ppo, pt, rm, sft" in err


def _run_seed(llm, folder: Path, model: Path, name: str, max_steps: int):
    """The seed-shaped file on `model` through ByzerLLM.pipeline, then its dry-run SQL through a new session
    (what `byzer-like run` does) with the project's next versions; both runs' results."""
    from byzer_like.session import Session

    f = seed_file(folder, name=name, model=str(model), max_steps=max_steps)
    text = f.read_text().replace("[Project]\n", "[Project]\noverwrite=true\n")
    f.write_text(text)
    done = llm.pipeline(f)
    again = Session(llm, progress=False)
    try:
        results = again.sql(P.compile_path(f).sql)
        answers = [(r["question"], r["answer"]) for r in again.table("Chat_answers").to_pylist()]
        predicted = again.table("DatasetLoader_1_predictions").to_pylist()
    finally:
        again.close()
    return done, results, answers, predicted


def _check_run(llm, done, results, answers, predicted, name: str, same_words: bool = False) -> None:
    job = next(r for r in done.results if r.table is not None and "job_id" in r.table.column_names).table.to_pylist()[0]
    assert job["state"] == "SUCCEEDED" and job["output_table"] == name and job["method"].startswith("lora")
    evaluated = next(r for r in done.results if "exact_match=" in (r.message or ""))
    assert "8 rows" in evaluated.message and llm.session.table("Trainer_eval_rows").num_rows == len(QA)
    preds = llm.session.table("DatasetLoader_1_predictions").to_pylist()
    assert len(preds) == len(QA) and all(isinstance(p["answer"], str) for p in preds)
    versions = [m for m in llm.runtime.catalog.models() if m.name == name]
    kinds = {m.version: m.kind for m in versions}
    assert kinds[1] == "adapter" and kinds[2] == "model"  # trained, then exported (merged), under [Project] name
    assert [q for q, _ in done.answers] == ["favorite color of bob?", "favorite color of erin?"]
    assert all(isinstance(a, str) and a for _, a in done.answers)
    # the dry-run SQL, run as a script, does the same: the same statements and results, trained (v3, an adapter),
    # merged (v4, a whole model), every row predicted, the same questions answered. (Not the same words: two
    # trainings of a random-init tiny model differ in the last bits, and its near-uniform logits flip greedy
    # choices; the SmolLM2 test compares the answers.)
    again = {m.version: m.kind for m in llm.runtime.catalog.models() if m.name == name}
    assert again.get(3) == "adapter" and again.get(4) == "model"
    assert [(r.kind, r.name) for r in results] == [(r.kind, r.name) for r in done.results]
    assert [q for q, _ in answers] == [q for q, _ in done.answers] and all(a for _, a in answers)
    assert [p["instruction"] for p in predicted] == [p["instruction"] for p in preds]
    if same_words:
        assert [p["answer"] for p in predicted] == [p["answer"] for p in preds]
        assert answers == done.answers


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_the_seed_shaped_file_trains_evaluates_predicts_exports_and_chats_on_a_tiny_llama(llm, tiny_models, workspace):
    name = "pipe_tiny"
    done, results, answers, predicted = _run_seed(llm, workspace / "pipelines" / "tiny", tiny_models["llama"], name, 2)
    try:
        _check_run(llm, done, results, answers, predicted, name)
    finally:
        if llm.is_model_exist(f"{name}_chat"):
            llm.undeploy(f"{name}_chat")


@pytest.mark.ray
@pytest.mark.real_model
@pytest.mark.timeout(900)
def test_the_seed_shaped_file_runs_on_smollm2(llm, smollm2_dir, workspace):
    name = "pipe_smollm2"
    done, results, answers, predicted = _run_seed(llm, workspace / "pipelines" / "smollm2", smollm2_dir, name, 4)
    try:
        _check_run(llm, done, results, answers, predicted, name, same_words=True)
    finally:
        if llm.is_model_exist(f"{name}_chat"):
            llm.undeploy(f"{name}_chat")


@pytest.mark.timeout(30)
def test_pt_deploy_eval_and_chat_stages_compile_to_their_statements(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"text": "hello"}\n')
    f = tmp_path / "p.ini"
    f.write_text(textwrap.dedent("""\
        [Project]
        name=pt_model
        pipeline=Trainer,Deploy,Eval,Chat
        [ModelLoader]
        pretrained_model_name_or_path=m/
        finetune_args=FinetuneArguments
        [FinetuneArguments]
        type=full
        [DatasetLoader_1]
        data_files=t.jsonl
        text_column=text
        cutoff_len=128
        [Trainer]
        model=ModelLoader
        dataset=DatasetLoader_1
        stage=pt
        [Deploy]
        model=Trainer
        udf_name=ptm
        num_workers=2
        [Eval]
        model=Deploy
        dataset=DatasetLoader_1
        metrics=perplexity
        [Chat]
        model=Deploy
        questions=
            first question?
            second, with a comma?
        """))
    c = P.compile_path(f)
    runs = [s.options for s in parse_script(c.sql, {}) if isinstance(s, Run)]
    assert runs[0]["pretrainedModelType"] == "sfft/auto" and runs[0]["maxLength"] == "128" and runs[0]["method"] == "full"
    assert runs[1] == {"action": "infer", "pretrainedModelType": "auto", "modelTable": "pt_model", "udfName": "ptm",
                       "replace": "true"}
    assert runs[2]["udfName"] == "ptm" and runs[2]["metrics"] == "perplexity"
    assert '!byzerllm setup "num_workers=2";' in c.sql and "select `text` as text from DatasetLoader_1_raw" in c.sql
    assert "(values ('first question?'), ('second, with a comma?'))" in c.sql and "ptm(llm_param(" in c.sql
    assert c.chat["udf_name"] == "ptm"


@pytest.mark.timeout(30)
def test_stage_ppo_compiles_to_a_ppo_job_against_its_reward_model(tmp_path):
    """llm-module's ppo stage: the Trainer's `reward_model` is the job's rewardModel (a deployed or registered
    reward model, resolved when the job is submitted)."""
    f = tmp_path / "ppo.ini"
    f.write_text(MINIMAL.replace("dataset=DatasetLoader_1", "dataset=DatasetLoader_1\nstage=ppo\nreward_model=rm_fn"))
    sql = P.compile_path(f).sql
    assert 'pretrainedModelType="ppo/' in sql and 'rewardModel="rm_fn"' in sql, sql
