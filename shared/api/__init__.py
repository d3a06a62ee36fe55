"""The REST API (functions/main.py: api): one module per resource, the route table, the request and response bodies."""
