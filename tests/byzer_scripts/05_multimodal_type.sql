-- expect-error: UnsupportedModelTypeError
-- Byzer's visualglm plugin is a multimodal model: the error names the kinds that can run.
run command as LLM.`` where action="infer" and pretrainedModelType="visualglm"
  and localModelDir="${models}/tiny-llama" and udfName="vision";
