-- Verbatim from the Byzer-LLM guide (shared/seeds/004_488c87adc351942b.txt).
-- load delta.`ai_model.baichuan_7B_model` as baichuan_7B_model;

-- 这个示例因为不会保存到数据湖(50G左右)，测试数据也只有33条，可以快速微调完毕，大概一两分钟。

-- 测试Llama2模型微调
!byzerllm setup sft;
!byzerllm setup "num_gpus=4";

run command as LLM.`` where 
and localPathPrefix="/home/byzerllm/models/sft/jobs"

-- 指定模型类型
and pretrainedModelType="sft/llama2"

-- 指定模型
and localModelDir="/home/byzerllm/models/Llama-2-7b-chat-hf"
and model="command"

-- 指定微调数据表
and inputTable="sft_data"

-- 输出新模型表
and outputTable="llama2_300"

-- 微调参数
and  detached="true"
and `sft.int.max_seq_length`="512";
