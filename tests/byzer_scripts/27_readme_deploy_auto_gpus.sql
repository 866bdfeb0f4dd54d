-- expect-error: DeployError
-- needs: ray
-- Byzer-LLM's README, "deploy a Hugging Face model" as written (paths changed): two GPUs per worker on a
-- cluster without GPUs stops at once with the numbers.
-- 部署hugginface 模型
!byzerllm setup single;

set node="master";
!byzerllm setup "num_gpus=2";
!byzerllm setup "workerMaxConcurrency=1";

run command as LLM.`` where 
action="infer"
and pretrainedModelType="custom/auto"
and localModelDir="${models}/tiny-llama"
and reconnect="false"
and udfName="my_3b_chat"
and modelTable="command";
