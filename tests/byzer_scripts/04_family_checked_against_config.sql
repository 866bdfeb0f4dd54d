-- expect-error: ModelDirError
-- `llama2` loads through auto after checking config.json: a qwen2 directory is refused before anything starts.
run command as LLM.`` where action="infer" and pretrainedModelType="llama2"
  and localModelDir="${models}/tiny-qwen2" and udfName="wrong_family";
