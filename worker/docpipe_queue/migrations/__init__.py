"""Versioned SQL migrations, applied in order by `docpipe migrate` (see docpipe_queue.migrator)."""
