"""Plans and runs a kNN query over a snapshot: filters, per-part search, merge."""
