-- Verbatim from the Byzer-LLM guide (shared/seeds/004_488c87adc351942b.txt).
-- Added (not in the guide): the DeepSpeed config that ${ds_config} below refers to.
set ds_config='''{
  "train_micro_batch_size_per_gpu": 1,
  "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}},
  "bf16": {"enabled": true}
}''';

--设置环境，比如总共使用 16 块卡做预训练
!byzerllm setup sfft;
!byzerllm setup "num_gpus=12";

-- 指定原始的模型进行二次预训练
run command as LLM.`` where 
and localPathPrefix="/home/byzerllm/models/sfft/jobs"
and pretrainedModelType="sfft/llama2"
-- 原始模型
and localModelDir="/home/byzerllm/models/Llama-2-7b-chat-hf"
-- and localDataDir="/home/byzerllm/data/raw_data"

-- 异步执行，因为这种训练往往需要几天几周甚至几个月。用户可以在
-- Ray Dashboard 找到 tensorboard 的地址，然后观察Loss
and detached="true"
and keepPartitionNum="true"

-- 配置deepspeed, 可选
and deepspeedConfig='''${ds_config}'''

-- 用来做预训练的数据
and inputTable="finalTrainData"
and outputTable="llama2_cn"
and model="command"
-- 一些特殊的预训练参数
and `sfft.int.max_length`="128"
and `sfft.bool.setup_nccl_socket_ifname_by_ip`="true"
;
