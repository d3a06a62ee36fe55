# Secret Manager secrets from the manifest, created empty: their values are added out of band
# (`gcloud secrets versions add`, README.md) and never pass through Terraform state.

resource "google_secret_manager_secret" "secret" {
  for_each  = local.secrets
  secret_id = each.key
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.api]
}
