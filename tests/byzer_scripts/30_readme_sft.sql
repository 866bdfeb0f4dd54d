-- expect: ok
-- needs: ray
-- expect-rows: sft_data=4
-- expect-jobs: SUCCEEDED
-- marks: heavy
-- Byzer-LLM's README, "fine-tune (sft)" (paths changed; num_gpus=0 on this CPU cluster): a detached LoRA job.
-- load data, we use the dummy data for finetune
-- data format supported by Byzer-SQL：https://docs.byzer.org/#/byzer-lang/zh-cn/byzer-llm/model-sft

load json.`${data}/dummy_data.jsonl` where
inferSchema="true"
as sft_data;

-- Fintune Llama2
!byzerllm setup sft;
!byzerllm setup "num_gpus=0";

run command as LLM.`` where 
and localPathPrefix="${out}/sft/jobs"

-- 指定模型类型
and pretrainedModelType="sft/llama2"

-- 指定模型
and localModelDir="${models}/tiny-llama"
and model="command"

-- 指定微调数据表
and inputTable="sft_data"

-- 输出新模型表
and outputTable="llama2_300"

-- 微调参数
and  detached="true"
and `sft.int.max_seq_length`="512";
