"""omendb.sql: the SQL that defines omendb's DuckDB macros, shipped as package data."""
