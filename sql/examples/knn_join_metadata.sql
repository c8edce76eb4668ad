-- Nearest neighbours joined with a metadata table that lives in DuckDB (or any file
-- DuckDB reads: Parquet, CSV, ...). Assumes an omendb table `docs` (id, category,
-- title, vector), e.g. from `omendb demo`-style data or the tests' fixture.
CREATE OR REPLACE TEMP TABLE owners AS
    SELECT * FROM (VALUES ('books', 'Ada'), ('music', 'Grace'), ('films', 'Linus')) AS t(category, owner);

-- the 5 rows nearest to row 1's vector, with the owner of their category
SELECT d.id, d.title, o.owner, round(d._distance, 4) AS distance
FROM omen_knn('docs', (SELECT vector FROM omen_scan('docs') WHERE id = 1), 5) AS d
LEFT JOIN owners AS o USING (category)
ORDER BY d._distance;
