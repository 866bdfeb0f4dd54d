-- expect-error: CheckpointError
-- Byzer-LLM's README, "convert a DeepSpeed checkpoint" as written (paths changed): the checkpoint folder
-- does not exist here, which is said in one line before anything loads.
!byzerllm setup single;

run command as LLM.`` where 
action="convert"
and pretrainedModelType="deepspeed/llama3b"
and modelNameOrPath="${models}/tiny-llama"
and checkpointDir="${out}/no_such_checkpoints"
and tag="Epoch-1"
and savePath="${out}/my_3b_test2";
