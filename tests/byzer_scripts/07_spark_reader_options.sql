-- expect: ok
-- expect-rows: people=2, typed=1, articles=2, docs=2, lines=3
load csv.`${data}/people.csv` where header="true" and sep=";" and inferSchema="false" and encoding="utf-8"
  and mode="FAILFAST" as people;
select name from people where age = '31' as typed;
load json.`${data}/articles.json` where multiLine="true" and samplingRatio="1.0" and header="true" as articles;
load text.`${data}/docs` where wholetext="true" as docs;
select value as text, file from docs where file like '%.txt' as docs_with_path;
load text.`${data}/docs` as lines;
