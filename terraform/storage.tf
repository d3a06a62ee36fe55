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

# Training checkpoints (issue 23): gs://<bucket>/<tenant>/<job id>/epoch-NNNNNN.npz, written by the runs each
# epoch and read back by a relaunched or retried run. The models bucket's sibling; checkpoints are working
# state, so they expire after checkpoint_retention_days and are not versioned.
resource "google_storage_bucket" "checkpoints" {
  # checkov:skip=CKV_GCP_62: only the training runs' account reads and writes; access is in Cloud Audit Logs (Data Access logs for storage.googleapis.com), no separate log bucket
  # checkov:skip=CKV_GCP_78: checkpoints are written once per epoch under new names and expire; versioning would only keep them longer
  name                        = local.checkpoints_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels
  force_destroy               = false

  lifecycle_rule {
    condition {
      age = var.checkpoint_retention_days
    }
    action {
      type = "Delete"
    }
  }
}

# The training runs (GKE pods through Workload Identity, Cloud Run training jobs: the fleet-training account)
# create checkpoints (objectCreator: no overwrite, no delete) and read them back (objectViewer, which also lists).
resource "google_storage_bucket_iam_member" "checkpoints_training" {
  for_each = toset(["roles/storage.objectCreator", "roles/storage.objectViewer"])
  bucket   = google_storage_bucket.checkpoints.name
  role     = each.key
  member   = "serviceAccount:${google_service_account.training.email}"
}
