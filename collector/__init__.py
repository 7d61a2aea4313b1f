"""hostflow collector: receives probe batches (HTTP) and NetFlow/IPFIX (UDP), stores them in DuckDB
and answers the named queries of docs/CONTRACT.md."""
