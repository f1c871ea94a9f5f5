"""CDS Hooks 2.0: the request envelope, prefetch, discovery and cards."""
