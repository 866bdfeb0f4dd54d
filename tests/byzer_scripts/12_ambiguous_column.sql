-- expect-error: ExecutionError
-- Field report 1: both sides have `name`; referencing it is ambiguous (Spark's rule), not a silent pick.
load json.`${data}/left.jsonl` as people;
load json.`${data}/right.jsonl` as cities;
select * from people join cities on people.id = cities.id as joined;
select name from joined as names;
