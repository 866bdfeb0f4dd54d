-- expect-error: UnsupportedModelTypeError
-- saas/sparkdesk speaks websockets, not the OpenAI protocol: refused, nothing deployed.
run command as LLM.`` where action="infer" and pretrainedModelType="saas/sparkdesk"
  and `saas.appid`="x" and `saas.api_key`="k" and udfName="spark_chat";
