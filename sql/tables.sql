-- Tables without a model: load, relational selects (run by DuckDB), save in every format, load back.
set data_dir = "data" where type="defaultParam";

load json.`${data_dir}/questions.jsonl` as questions;

select id, task, length(task) as chars, split(task, ' ')[0] as verb from questions as tasks;
select verb, count(*) as n, max(chars) as longest from tasks group by verb order by n desc, verb as verbs;

save overwrite verbs as csv.`out/verbs` where header="true";
load csv.`out/verbs` where header="true" as verbs_again;

save overwrite tasks as parquet.`out/tasks`;
save append tasks as parquet.`out/tasks`;
load parquet.`out/tasks` as tasks_twice;

select task from questions order by id as lines;
save overwrite lines as text.`out/lines`;
load text.`out/lines` as lines_again;

select (select count(*) from tasks_twice) as parquet_rows, (select count(*) from lines_again) as text_rows,
       (select sum(n) from verbs_again) as csv_rows as counts;

!show tables;
!desc tasks;
