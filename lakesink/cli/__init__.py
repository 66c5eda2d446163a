"""The `lakesink` command line (main), over the public API only: ingest, status, gc, verify."""

from lakesink.cli.app import main

__all__ = ["main"]
