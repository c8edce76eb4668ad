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

-- The k rows of table t that best match the words of query (a string), best BM25 score
-- first, with all of t's columns plus _score (larger is better). t needs a text index
-- (Table.create_text_index); rows that hold no query term never come back. filter: as
-- for omen_knn. Correlated use runs one search per query row, with one set of parts.
CREATE OR REPLACE MACRO omen_text(t, query, k, filter := NULL) AS TABLE
    SELECT hit.* EXCLUDE (_rank)
    FROM (SELECT unnest(struct_extract(omen_text_rows(t, query, k, filter), t)) AS hit)
    ORDER BY hit._rank;

-- Hybrid search: the vector search for q and the text search for query (each
-- max(2k, 20) deep, with the same filter) fused by reciprocal rank fusion, as
-- Table.search(q, text=query) fuses them: _relevance_score = sum over the two rankings
-- of weight / (60 + rank), descending, then _distance and _score (NULL where that side
-- did not rank the row).
CREATE OR REPLACE MACRO omen_hybrid(t, q, query, k, filter := NULL, ef := NULL, exact := false,
                                    vector_weight := 1.0, text_weight := 1.0) AS TABLE
    SELECT hit.* EXCLUDE (_rank)
    FROM (
        SELECT unnest(struct_extract(omen_hybrid_rows(
            t, CASE WHEN typeof(q) = 'BLOB' THEN omen_vector(q::BLOB) ELSE q::FLOAT[] END,
            query, k, filter, ef, exact, vector_weight, text_weight), t)) AS hit
    )
    ORDER BY hit._rank;
