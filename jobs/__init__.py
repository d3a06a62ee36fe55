"""Batch workloads the fleet launches (GKE, Cloud Run, local): see jobs/README.md."""
