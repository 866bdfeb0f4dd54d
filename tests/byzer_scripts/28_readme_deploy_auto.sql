-- expect: ok
-- needs: ray
-- expect-rows: a=1
-- Byzer-LLM's README, "deploy a Hugging Face model" (paths changed; num_gpus=0 on this CPU cluster), then
-- one question to it.
-- 部署hugginface 模型
!byzerllm setup single;

set node="master";
!byzerllm setup "num_gpus=0";
!byzerllm setup "workerMaxConcurrency=1";

run command as LLM.`` where 
action="infer"
and pretrainedModelType="custom/auto"
and localModelDir="${models}/tiny-llama"
and reconnect="false"
and udfName="my_3b_chat"
and modelTable="command";

select llm_result(my_3b_chat(llm_param(map("instruction", "hello")))) as answer as a;
