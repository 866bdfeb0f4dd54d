-- expect: ok
-- needs: ray
-- expect-rows: answers=2
-- Byzer-LLM's client defaults, written as Byzer users write them, then a custom/<family> deploy.
!byzerllm setup single;
!byzerllm setup "maxConcurrency=1";
!byzerllm setup "workerMaxConcurrency=2";
!byzerllm setup "masterMaxConcurrency=1000";
!byzerllm setup "infer_backend=transformers";
!byzerllm setup "pythonMode=ray";
!byzerllm setup "standalone=true";
!byzerllm setup "num_cpus=0.5";

run command as LLM.`` where action="infer"
  and pretrainedModelType="custom/llama2"
  and localModelDir="${models}/tiny-llama"
  and udfName="byzer_chat"
  and reconnect="false";

load json.`${data}/tasks.jsonl` as tasks;
select id, llm_result(byzer_chat(llm_param(map("instruction", task, "max_new_tokens", 4)))) as answer
from tasks where task is not null as answers;
