"""The Delta protocol side: the only package that imports deltalake.

table: the open table (snapshot, txn positions, delta-rs writes); protocol: what lakesink can append to;
errors: delta-rs errors as lakesink errors; log_reader: reading log files directly; log_entry: the bytes of
an append commit; log_store: create-only writes of log entries (used by lakesink.commit only).
"""
