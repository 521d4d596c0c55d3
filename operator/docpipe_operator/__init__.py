"""docpipe operator: the control plane for DocumentPipeline resources."""
