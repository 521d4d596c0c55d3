"""The command line (`docpipe`) and the local dev stack: the entry points, above every layer."""
