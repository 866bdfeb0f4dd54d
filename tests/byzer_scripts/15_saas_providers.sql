-- expect: ok
-- needs: ray
-- expect-rows: remote=1
-- saas/deepseek (an OpenAI-compatible provider: base URL overridden to a local server) and saas/azure_openai.
!byzerllm setup "num_cpus=0.2";
run command as LLM.`` where action="infer" and pretrainedModelType="saas/deepseek"
  and `saas.base_url`="${saas_url}" and `saas.api_key`="sk-test" and udfName="ds_chat";
run command as LLM.`` where action="infer" and pretrainedModelType="saas/azure_openai"
  and `saas.api_type`="azure" and `saas.api_base`="${saas_root}" and `saas.api_version`="2024-06-01"
  and `saas.deployment_id`="gpt-4o-prod" and `saas.api_key`="az-test" and udfName="az_chat";
select 1 as k as one;
select llm_result(ds_chat(llm_param(map("instruction", "ping")))) as a,
       llm_result(az_chat(llm_param(map("instruction", "pong")))) as b
from one as pair;
select a, b from pair where a = 'echo: ping' and b = 'echo: pong' as remote;
