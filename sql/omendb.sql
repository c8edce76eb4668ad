-- omendb's DuckDB functions. omendb.duckdb_connect(db) runs this file on the connection
-- after registering, per table T, the view omen_scan__T (the table's live rows plus a row
-- number _omen_row), the vectorised UDF omen_knn_rows (kNN over the same snapshot) and
-- omen_vector(BLOB) -> FLOAT[] (little-endian float32 bytes to a vector).

-- Every live row of table t (vectors included), straight from the memory-mapped segments
-- plus unflushed rows. Projections and filters are pushed down into the Arrow scan.
CREATE OR REPLACE MACRO omen_scan(t) AS TABLE
    SELECT * EXCLUDE (_omen_row) FROM query_table('omen_scan__' || t);

-- The k nearest rows of table t to query q, nearest first, with all of t's columns plus
-- _distance (smaller is closer). q: FLOAT[n], DOUBLE[] or any numeric list, or a BLOB of
-- little-endian float32. filter: an SQL predicate over t's columns, applied before
-- ranking (k rows come back whenever k rows match). Correlated use (LATERAL, or a
-- column of queries) runs as one batched search per chunk of query rows.
CREATE OR REPLACE MACRO omen_knn(t, q, k,
                                 filter := NULL, ef := NULL, exact := false) AS TABLE
    WITH hits AS (
        SELECT unnest(omen_knn_rows(t, CASE WHEN typeof(q) = 'BLOB' THEN omen_vector(q::BLOB) ELSE q::FLOAT[] END,
                             k, filter, ef, exact), recursive := true)
    )
    SELECT s.* EXCLUDE (_omen_row), hits._distance
    FROM hits JOIN query_table('omen_scan__' || t) AS s USING (_omen_row)
    ORDER BY hits._rank;
