# Artifact Registry: the training image (training and retraining jobs run it).

resource "google_artifact_registry_repository" "fleet" {
  # checkov:skip=CKV_GCP_84: Google-managed encryption at rest; the training image holds code, no data or secrets. A CMEK key can be added (kms_key_name) where policy requires it
  repository_id = "fleet"
  location      = var.region
  format        = "DOCKER"
  description   = "Agent Fleet Manager images (training, retraining)"
  labels        = local.labels

  docker_config {
    immutable_tags = false
  }

  depends_on = [google_project_service.api]
}
