-- Verbatim from the Byzer-LLM guide (shared/seeds/004_488c87adc351942b.txt).
!byzerllm setup single;
!byzerllm setup "num_gpus=2";

run command as LLM.`` where 
action="infer"
and pretrainedModelType="llama"
and localModelDir="/home/byzerllm/models/openbuddy-llama-13b-v5-fp16"
and reconnect="true"
and udfName="llama_13b_chat"
and modelTable="command";
