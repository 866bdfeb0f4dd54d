-- expect-error: ConfigError
-- Byzer's vllm back end is not served here yet: a typed error naming the valid back ends.
!byzerllm setup "infer_backend=vllm";
