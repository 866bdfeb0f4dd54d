-- expect-error: ConfigError
-- Byzer's llama_cpp back end is not served here: a typed error naming the valid back ends (transformers, vllm).
!byzerllm setup "infer_backend=vllm";
!byzerllm setup "infer_backend=llama_cpp";
