"""The acceptance run of evaluation on the real small model (SmolLM2-135M-Instruct, the `smollm2` fixture):
a LoRA fine-tune with sft's default options on the 30 capital-city pairs, `action="eval"` on those pairs for
the base and the tuned version, `eval compare` with an interval that excludes 0, and `promote ... if` that
promotes the tuned version and refuses the base; `modelTable="m@production"` then serves the tuned one.
Marker real_model (run apart: `python3 dev.py test -m real_model`); a few minutes on a quiet machine."""
from __future__ import annotations

from pathlib import Path

import pytest

from byzer_like.session import Session

CAPITALS = Path(__file__).resolve().parent / "fixtures" / "capitals_qa.jsonl"
EVAL = 'and inputTable="capitals" and metrics="exact_match,token_f1" and maxNewTokens="16"'


@pytest.mark.real_model
@pytest.mark.ray
@pytest.mark.timeout(1200)
def test_lora_raises_exact_match_and_the_gate_promotes_only_the_tuned_version(llm, smollm2, workspace):
    llm.catalog.register_model("capitals_model", kind="model", path=str(smollm2), base_model=None, model_type="llama",
                               method="import(smollm2)", params={}, metrics={}, job_id=None, overwrite=True)
    base = llm.catalog.model("capitals_model")
    data = workspace / "data" / "capitals_qa.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(CAPITALS.read_text())
    s = Session(llm, progress=False)
    try:
        s.sql(f"load json.`{data}` as capitals;")
        before = s.sql(f'run command as LLM.`` where action="eval" and modelTable="{base.ref}" {EVAL} as before;'
                       )[-1].table.to_pylist()[0]
        job = s.sql(f"""
            !byzerllm setup sft;
            run command as LLM.`` where pretrainedModelType="sft/llama" and modelTable="{base.ref}"
                and inputTable="capitals" and outputTable="capitals_model" and overwrite="true";
            !byzerllm setup single;""")[1].table.to_pylist()[0]
        assert job["state"] == "SUCCEEDED", job
        tuned = f"capitals_model@v{job['model_version']}"
        after = s.sql(f'run command as LLM.`` where action="eval" and modelTable="{tuned}" {EVAL} as after;'
                      )[-1].table.to_pylist()[0]
        print(f"exact match {before['exact_match']:.3f} -> {after['exact_match']:.3f}")
        assert after["exact_match"] - before["exact_match"] >= 0.5
        cmp = {r["metric"]: r for r in s.sql(f"!byzerllm eval compare {base.ref} {tuned};")[-1].table.to_pylist()}
        em = cmp["exact_match"]
        assert em["delta"] >= 0.5 and em["ci_low"] > 0 and em["significant"], em
        gate = "if exact_match >= {other}.exact_match + 0.02 on capitals"
        refused = s.sql(f"!byzerllm model promote {base.ref} {gate.format(other=tuned)};")[-1]
        assert refused.table.to_pylist()[0]["promoted"] is False and "short by" in refused.message
        promoted = s.sql(f"!byzerllm model promote {tuned} {gate.format(other=base.ref)};")[-1]
        assert promoted.table.to_pylist()[0]["promoted"] is True, promoted.message
        assert llm.catalog.model("capitals_model@production").ref == tuned
        assert llm.catalog.model(base.ref).stage == "candidate"
        # the production stage deploys the tuned version (its answers come from the result cache)
        prod = s.sql(f'run command as LLM.`` where action="eval" and modelTable="capitals_model@production" {EVAL};'
                     )[-1].table.to_pylist()[0]
        assert prod["exact_match"] == after["exact_match"] and prod["version"] == int(tuned.rsplit("@v", 1)[1])
        from byzer_like.eval.report import wait_for_reports

        assert wait_for_reports(60)  # the PNG is drawn on a thread of its own
        assert Path(after["report_md"]).is_file() and Path(after["report_png"]).is_file()
    finally:
        s.close()
