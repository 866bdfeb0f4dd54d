-- expect-error: SqlSyntaxError
-- An ET that does not exist here: the error lists the run targets that do.
load json.`${data}/left.jsonl` as l;
run l as JsonExpandExt.`` where inputCol="name" as expanded;
