"""Several broker processes as one, on Redis."""
