"""The OpenTelemetry GenAI ingest (fleet-otlp): OTLP/HTTP traces whose model-call spans count as calls."""
