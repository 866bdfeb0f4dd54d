-- expect: ok
-- expect-rows: from_json=1, from_csv=1, from_parquet=1
-- Field report 1: a repeated column name is kept on every format (written as x and x_1).
select 1 as x, 2 as x as t;
save overwrite t as json.`${out}/dup_json`;
save overwrite t as csv.`${out}/dup_csv`;
save overwrite t as parquet.`${out}/dup_parquet`;
load json.`${out}/dup_json` as j;
load csv.`${out}/dup_csv` as c;
load parquet.`${out}/dup_parquet` as p;
select x, x_1 from j where x = 1 and x_1 = 2 as from_json;
select x, x_1 from c where x = 1 and x_1 = 2 as from_csv;
select x, x_1 from p where x = 1 and x_1 = 2 as from_parquet;
