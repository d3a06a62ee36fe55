# The Google APIs the deployment uses, and nothing more.
locals {
  apis = toset([
    "artifactregistry.googleapis.com",     # the training image
    "binaryauthorization.googleapis.com",  # the GKE cluster's Binary Authorization policy
    "cloudresourcemanager.googleapis.com", # project IAM bindings
    "cloudbuild.googleapis.com",           # builds the functions from their source archive
    "cloudfunctions.googleapis.com",       # the functions (gen2)
    "cloudscheduler.googleapis.com",       # the ticks of the manifest's schedules
    "container.googleapis.com",            # the GKE cluster of GPU training jobs
    "eventarc.googleapis.com",             # required by Cloud Functions gen2
    "firestore.googleapis.com",            # all state
    "iam.googleapis.com",                  # service accounts
    "logging.googleapis.com",              # log-based metrics (monitoring.tf)
    "monitoring.googleapis.com",           # the dashboard and alert policies (monitoring.tf)
    "pubsub.googleapis.com",               # events, commands, ticks
    "run.googleapis.com",                  # gen2 functions run on Cloud Run; training and retraining jobs
    "secretmanager.googleapis.com",        # Slack secrets
    "storage.googleapis.com",              # the source archive, the models' bytes
  ])
}

resource "google_project_service" "api" {
  for_each           = local.apis
  service            = each.value
  disable_on_destroy = false
}
