"""Launchers: where a training job runs. One module per backend (gke, cloudrun, local), each a thin
adapter over its official client library; shared/launchers/base.py holds what they have in common.
Imported lazily: the kubernetes and Cloud Run clients stay out of every other function's cold start."""
