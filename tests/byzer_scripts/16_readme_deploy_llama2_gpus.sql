-- expect-error: DeployError
-- needs: ray
-- Byzer-LLM's README, "deploy a model" (paths changed): four GPUs per worker on a cluster without GPUs
-- stops at once with the numbers, rather than waiting for cards that never come.
!byzerllm setup single;
!byzerllm setup "num_gpus=4";
!byzerllm setup "maxConcurrency=1";
!byzerllm setup "infer_backend=transformers";

run command as LLM.`` where 
action="infer"
and pretrainedModelType="custom/llama2"
and localModelDir="${models}/tiny-llama"
and reconnect="false"
and udfName="llama2_chat"
and modelTable="command";
