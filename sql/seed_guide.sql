-- The statements of the Byzer-LLM guide ("how to adapt a new model"), with only paths and names
-- changed: the model directory comes from ${model_dir}, and num_gpus is 0 because these machines
-- have no GPU (the guide asks for 2). The select is the guide's, byte for byte: the full-width
-- comma after array(...) and the trailing comma in map(...) are accepted.
set model_dir = "models/tiny-llama" where type="defaultParam";

!byzerllm setup single;
!byzerllm setup "num_gpus=0";

run command as LLM.`` where 
action="infer"
and pretrainedModelType="llama"
and localModelDir="${model_dir}"
and reconnect="true"
and udfName="llama_13b_chat"
and modelTable="command";

select 
llama_13b_chat(llm_param(map(
              "user_role","User",
              "assistant_role","Assistant",
              "system_msg",'You are a helpful assistant. Think it over and answer the user question correctly.',
              "temperature",0.3,
              "instruction",llm_prompt('
你好，请记住我的名字：{0}              
',array("祝威廉"))，              
              "generation.image","https://www.baidu.com/img/flexible/logo/pc/result.png",

)))

 as q as q1;

select llm_result(q) as answer, json_extract(q, '$.metadata.ignored_options') as ignored from q1 as q2;
