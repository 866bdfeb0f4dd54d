-- expect: ok
-- needs: ray
-- expect-rows: s=1
-- Field reports 3 and 4: JSON-object answers are learnt as JSON text; `as job` names the job's row.
load json.`${data}/extract.jsonl` as extract;
run command as LLM.`` where pretrainedModelType="sft/llama"
  and localModelDir="${models}/tiny-llama"
  and inputTable="extract"
  and `sft.int.max_seq_length`="64"
  and maxSteps="1"
  and detached="false"
  as job;
select state from job where state = 'SUCCEEDED' as s;
