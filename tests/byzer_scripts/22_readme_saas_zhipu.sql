-- expect-error: DeployError
-- needs: ray
-- marks: heavy
-- Byzer-LLM's README (its 2024 version), "SaaS: Zhipu" as written: its ten replicas deploy (a tenth of a CPU
-- each), and the provider cannot be reached from here, which ends in one line.
!byzerllm setup single;
!byzerllm setup "num_gpus=0";
!byzerllm setup "maxConcurrency=10";

run command as LLM.`` where
action="infer"
and pretrainedModelType="saas/zhipu"
and `saas.api_key`="xxxxxxxxxxxxxxxxxx"
and `saas.secret_key`="xxxxxxxxxxxxxxxx"
and `saas.model`="chatglm_lite"
and udfName="zhipu_saas"
and modelTable="command";
