-- omendb's DuckDB functions. omendb.duckdb_connect(db) runs this file on the connection
-- after registering, per table T, the view omen_scan__T (the table's live rows plus a row
-- number _omen_row), the vectorised UDF omen_knn_rows (kNN over the same snapshot,
-- returning the hit rows in a struct with one field per table) and
-- omen_vector(BLOB) -> FLOAT[] (little-endian float32 bytes to a vector).

-- Every live row of table t (vectors included), straight from the memory-mapped segments
-- plus unflushed rows. Projections and filters are pushed down into the Arrow scan.
CREATE OR REPLACE MACRO omen_scan(t) AS TABLE
    SELECT * EXCLUDE (_omen_row) FROM query_table('omen_scan__' || t);

-- The k nearest rows of table t to query q, nearest first, with all of t's columns plus
-- _distance (smaller is closer). q: FLOAT[n], DOUBLE[] or any numeric list, or a BLOB of
-- little-endian float32. filter: an SQL predicate over t's columns, applied before
-- ranking (k rows come back whenever k rows match). Correlated use (LATERAL, or a
-- column of queries) runs as one batched search per chunk of query rows. t must be a
-- constant: struct_extract picks t's field of the UDF's result when the query is bound.
CREATE OR REPLACE MACRO omen_knn(t, q, k,
                                 filter := NULL, ef := NULL, exact := false) AS TABLE
    SELECT hit.* EXCLUDE (_rank)
    FROM (
        SELECT unnest(struct_extract(omen_knn_rows(
            t, CASE WHEN typeof(q) = 'BLOB' THEN omen_vector(q::BLOB) ELSE q::FLOAT[] END,
            k, filter, ef, exact), t)) AS hit
    )
    ORDER BY hit._rank;
