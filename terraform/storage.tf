# Cloud Storage buckets of the manifest (`buckets`): the models' bytes. Writers and readers as listed there.

resource "google_storage_bucket" "models" {
  # checkov:skip=CKV_GCP_62: readers and writers are this deployment's own service accounts; access is in Cloud Audit Logs (Data Access logs for storage.googleapis.com), no separate log bucket
  name                        = local.models_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels

  # Object names carry their content hash and are never overwritten; old versions are kept as the record
  # of what was in service when (the registry in Firestore points at them).
  versioning {
    enabled = true
  }
}

locals {
  models = local.buckets["fleet-models"]
  # Who writes and who reads, by name in the manifest: a function's account, or a run job's.
  bucket_members = {
    for name in distinct(concat(local.models.writers, local.models.readers)) :
    name => contains(keys(local.functions), name) ? google_service_account.function[name].email : google_service_account.retrain.email
  }
}

# Writers create new versions (objectCreator: no overwrite, no delete).
resource "google_storage_bucket_iam_member" "models_writers" {
  for_each = toset(local.models.writers)
  bucket   = google_storage_bucket.models.name
  role     = "roles/storage.objectCreator"
  member   = "serviceAccount:${local.bucket_members[each.key]}"
}

# Readers load the version in service.
resource "google_storage_bucket_iam_member" "models_readers" {
  for_each = toset(local.models.readers)
  bucket   = google_storage_bucket.models.name
  role     = "roles/storage.objectViewer"
  member   = "serviceAccount:${local.bucket_members[each.key]}"
}
