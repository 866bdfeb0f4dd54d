-- expect: ok
-- needs: ray
-- expect-rows: answers=3, nulls=1, answered=2
-- Field report 2: a NULL instruction is answered with NULL, never sent as the text "None".
!byzerllm setup "num_cpus=0.5";
run command as LLM.`` where action="infer" and pretrainedModelType="llama"
  and localModelDir="${models}/tiny-llama" and udfName="null_chat";
load json.`${data}/tasks.jsonl` as tasks;
select id, task, null_chat(llm_param(map("instruction", task, "max_new_tokens", 4))) as r from tasks as answers;
select id from answers where r is null and task is null as nulls;
select id from answers where r is not null and get_json_object(r, '$.input') = task as answered;
