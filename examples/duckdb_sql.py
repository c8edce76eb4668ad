"""DuckDB SQL over omendb: kNN as a table function, joined with ordinary SQL tables.

    python examples/duckdb_sql.py

`omen_knn(table, query, k, filter := ..., ef := ..., exact := ...)` and `omen_scan(table)`
work anywhere in a query: CTEs, joins, LATERAL per row of another table.
"""

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

import omendb

rng = np.random.default_rng(2)
dim, rows = 48, 3_000
vectors = rng.standard_normal((rows, dim)).astype(np.float32)

with tempfile.TemporaryDirectory() as tmp, omendb.open(Path(tmp) / "sql.omen") as db:
    db.create_table("papers", data=pa.table({
        "id": np.arange(rows),
        "venue_id": rng.integers(0, 5, rows),
        "year": rng.integers(2015, 2025, rows),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
    }), metric="cosine")

    con = omendb.duckdb_connect(db)            # a DuckDB connection with omendb's functions
    con.sql("CREATE TABLE venues AS SELECT * FROM (VALUES (0, 'NeurIPS'), (1, 'ICML'), (2, 'ACL'), "
            "(3, 'SIGIR'), (4, 'VLDB')) v(venue_id, venue)")

    q = vectors[7].tolist()
    print("5 nearest papers since 2020, with their venue:")
    for row in con.execute(f"""
            SELECT k.id, v.venue, k.year, k._distance::DECIMAL(6, 4) AS distance
            FROM omen_knn('papers', ?::FLOAT[{dim}], 5, filter := 'year >= 2020') k
            JOIN venues v USING (venue_id)
            ORDER BY k._distance""", [q]).fetchall():
        print("  ", row[0], row[1], row[2], float(row[3]))

    # one kNN per row of another table: DuckDB batches the queries into few omendb searches
    con.execute(f"CREATE TABLE probes AS SELECT id AS probe, vector::FLOAT[{dim}] AS vec "
                f"FROM omen_scan('papers') WHERE id < 4")
    pairs = con.sql("SELECT p.probe, count(*) AS neighbours, min(k._distance) AS self_distance "
                    "FROM probes p, LATERAL omen_knn('papers', p.vec, 3) k GROUP BY p.probe ORDER BY p.probe").fetchall()
    print("per-row kNN (probe, neighbours, distance to itself):", [(p, n, round(d, 4)) for p, n, d in pairs])

    per_year = db.sql("SELECT year, count(*) FROM omen_scan('papers') GROUP BY year ORDER BY year LIMIT 3").fetchall()
    print("rows per year (first 3):", per_year)
    con.close()
