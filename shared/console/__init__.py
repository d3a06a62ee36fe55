"""The web console (``functions/main.py: console``, function fleet-console): server-rendered pages over the
same data, keys and roles as the REST API (shared/api), with a strict Content-Security-Policy."""
