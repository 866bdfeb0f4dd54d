-- Multi-turn chat in SQL, joins and aggregates around model calls, and rows that fail on their own.
set model_dir = "models/tiny-llama" where type="defaultParam";
set data_dir = "data" where type="defaultParam";

!byzerllm setup "num_workers=1";
run command as LLM.`` where action="infer" and pretrainedModelType="llama"
    and localModelDir="${model_dir}" and reconnect="true" and udfName="conversation_chat";

load json.`${data_dir}/questions.jsonl` as questions;

-- first turn, then a second turn that carries the first one as history (llm_stack)
select id, task, conversation_chat(llm_param(map("instruction", task, "temperature", 0.0, "max_new_tokens", 8))) as turn1
from questions where id < 6 as first_turn;
select id, turn1, conversation_chat(llm_stack(turn1, llm_param(map("instruction", "and shorter?",
       "temperature", 0.0, "max_new_tokens", 8)))) as turn2
from first_turn as second_turn;
select id, llm_result(turn1) as answer1, llm_result(turn2) as answer2,
       json_array_length(json_extract(turn2, '$.history')) as history_messages
from second_turn order by id as dialogue;

-- relational work around the answers: a join and an aggregate
select q.id, length(d.answer1) as answer_chars, q.task from questions q join dialogue d on q.id = d.id as sized;
select count(*) as answered, sum(answer_chars) as chars from sized as totals;

-- a row whose prompt cannot fit the model gives an error value instead of failing the statement
set llm_on_error = "null";
select id, conversation_chat(llm_param(map("instruction", repeat('word ', case when id = 2 then 3000 else 1 end),
       "max_new_tokens", 4))) as r
from questions where id < 4 as risky;
select id, llm_result(r) as answer, json_extract_string(r, '$.error') as error from risky order by id as risky_answers;
set llm_on_error = "raise";

!byzerllm model remove conversation_chat;
