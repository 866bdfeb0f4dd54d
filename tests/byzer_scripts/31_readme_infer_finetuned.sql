-- expect-error: ModelDirError
-- Byzer-LLM's README, "deploy the fine-tuned model" as written (paths changed): that job's folder does not
-- exist here, which is said in one line before anything deploys.
!byzerllm setup single;
run command as LLM.`` where 
action="infer"
and localPathPrefix="${out}/infer/jobs"
and localModelDir="${out}/sft/jobs/sft-william-llama2-alpaca-data-ccb8fb55-382c-49fb-af04-5cbb3966c4e6/finetune_model/final"
and pretrainedModelType="custom/llama2"
and udfName="fintune_llama2_chat"
and modelTable="command";
