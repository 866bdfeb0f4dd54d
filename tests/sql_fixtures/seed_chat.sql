-- Verbatim from the Byzer-LLM guide (shared/seeds/004_488c87adc351942b.txt).
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
