-- expect-error: UnknownOptionError
-- Not a Spark reader option: "did you mean 'inferSchema'?".
load csv.`${data}/people.csv` where inferSchem="true" as people;
