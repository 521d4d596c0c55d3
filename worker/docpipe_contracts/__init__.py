"""The shared contracts of docpipe: metric names and labels, error kinds, the request-id header,
accepted content types and settings loading. Every other package may import this one; it imports
none of them."""
