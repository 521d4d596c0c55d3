"""The intake HTTP API (`docpipe api`): authenticated upload, status and search."""
