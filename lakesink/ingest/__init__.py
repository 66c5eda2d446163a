"""Source to table: the run (run), the commit-group cutter (cutter), the overlapped write path (pipeline),
the dead-letter table (quarantine), the resume checks (resume) and the reports (report)."""
