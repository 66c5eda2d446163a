"""On an existing table: status, verify and gc. Never imports ingest or sink."""
