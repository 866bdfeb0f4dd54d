-- byzer-like quick start: deploy a small instruct model (SmolLM2-135M-Instruct) on two workers and
-- answer a table of questions with it. `byzer-like quickstart` imports the model once (registered as
-- smollm2, in the workspace's models/smollm2) and copies sql/data into the workspace's quickstart/data
-- (a file of yours there is kept), then runs this script; paths resolve inside the workspace. Run it
-- yourself with:
--   byzer-like run sql/quickstart.sql --set model_dir=models/smollm2
set model_dir = "models/smollm2" where type="defaultParam";
set data_dir = "quickstart/data" where type="defaultParam";

!byzerllm setup single;
!byzerllm setup "num_workers=2";

-- the model becomes the SQL function quickstart_chat(...)
run command as LLM.`` where
    action="infer"
    and pretrainedModelType="llama"
    and localModelDir="${model_dir}"
    and reconnect="true"
    and udfName="quickstart_chat"
    and modelTable="command";

load json.`${data_dir}/questions.jsonl` as questions;

-- every row goes to the model; rows are sent in batches to both workers and come back in order
select id, task, quickstart_chat(llm_param(map(
        "instruction", llm_prompt('Write a Python function that {0}.', array(task)),
        "temperature", 0.0,
        "max_new_tokens", 64))) as r
from questions as answered;

select id, task, llm_result(r) as answer from answered order by id as answers;

save overwrite answers as json.`out/quickstart_answers`;
