"""The HTTP API: routes, schemas, and the one place that maps errors to HTTP."""
