-- Near-duplicates: for every row, its nearest other row; keep pairs closer than a
-- threshold. The LATERAL over all rows runs as batched searches (one per chunk of rows).
SELECT d.id AS id, n.id AS duplicate_of, round(n._distance, 5) AS distance
FROM omen_scan('docs') AS d,
     LATERAL omen_knn('docs', d.vector, 2) AS n
WHERE n.id <> d.id AND n._distance < 0.001 AND d.id > n.id
ORDER BY d.id;
