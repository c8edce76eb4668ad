"""SQL through DuckDB: ``omen_knn`` / ``omen_scan`` on a connection, and ``db.sql()``.

A face above the database: it registers itself as the engine ``Database.sql`` runs.
"""

from ..database import use_sql_engine
from .session import SqlError, SqlRelation, SqlSession, definitions_sql, duckdb_connect

use_sql_engine(SqlSession.for_database)

__all__ = ["duckdb_connect", "SqlSession", "SqlError", "SqlRelation", "definitions_sql"]
