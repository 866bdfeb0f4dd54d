-- expect: ok
-- expect-rows: parts=2, newTrainData=2
-- Byzer's pretraining preparation: one row per file, repartitioned by file.
load text.`${data}/docs` where wholetext="true" as trainData;
run trainData as TableRepartition.`` where partitionNum="12" and partitionCols="file" as parts;
select value as text, file from parts as newTrainData;
