"""Sources: where records come from, each mapping its progress to an int64 position."""
