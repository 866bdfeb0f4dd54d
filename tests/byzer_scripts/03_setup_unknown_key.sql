-- expect-error: UnknownOptionError
-- A typo of a Byzer key stays an error (with "did you mean 'maxConcurrency'?").
!byzerllm setup "maxConcurency=4";
