# One service account per function and per job, each role granted to it alone and said why.

data "google_project" "this" {
  depends_on = [google_project_service.api]
}

resource "google_service_account" "function" {
  for_each     = local.functions
  account_id   = local.function_sa[each.key]
  display_name = "Agent Fleet Manager ${each.key} (${var.environment})"
  depends_on   = [google_project_service.api]
}

# Every function keeps its state in Firestore (agents, usage, episodes, approvals, jobs...).
resource "google_project_iam_member" "function_firestore" {
  for_each = local.functions
  project  = var.project_id
  role     = "roles/datastore.user"
  member   = "serviceAccount:${google_service_account.function[each.key].email}"
}

# Each function publishes to the topics the manifest lists for it, and to no other.
resource "google_pubsub_topic_iam_member" "function_publishes" {
  for_each = local.function_publishes
  topic    = google_pubsub_topic.topic[each.value.topic].id
  role     = "roles/pubsub.publisher"
  member   = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

# Each function reads the secrets the manifest lists for it, and no other.
resource "google_secret_manager_secret_iam_member" "function_reads" {
  for_each  = local.function_secrets
  secret_id = google_secret_manager_secret.secret[each.value.secret].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.function[each.value.function].email}"
}

# Push subscriptions authenticate to the event functions as this account (OIDC).
resource "google_service_account" "pusher" {
  account_id   = "fleet-pubsub-push"
  display_name = "Agent Fleet Manager Pub/Sub push (${var.environment})"
  depends_on   = [google_project_service.api]
}

# The Pub/Sub service agent signs the push OIDC tokens as the pusher account.
resource "google_service_account_iam_member" "pubsub_agent_token_creator" {
  service_account_id = google_service_account.pusher.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  # The service agent exists once the Pub/Sub API is enabled.
  depends_on = [google_project_service.api]
}

# Training runs (GKE pods through Workload Identity, Cloud Run training jobs) run as this account:
# they report progress on job-progress and nothing else.
resource "google_service_account" "training" {
  account_id   = "fleet-training"
  display_name = "Agent Fleet Manager training runs (${var.environment})"
  depends_on   = [google_project_service.api]
}

resource "google_pubsub_topic_iam_member" "training_progress" {
  topic  = google_pubsub_topic.topic["job-progress"].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.training.email}"
}

# The retraining job has its own identity: it reads the history and writes the model registry, which
# the tenants' training account (whose jobs may bring their own image) must never do.
resource "google_service_account" "retrain" {
  account_id   = "fleet-model-retrain"
  display_name = "Agent Fleet Manager model retraining (${var.environment})"
  depends_on   = [google_project_service.api]
}

resource "google_project_iam_member" "retrain_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.retrain.email}"
}

# Both job accounts pull the training image.
resource "google_artifact_registry_repository_iam_member" "jobs_pull" {
  for_each   = { training = google_service_account.training.email, retrain = google_service_account.retrain.email }
  repository = google_artifact_registry_repository.fleet.name
  location   = google_artifact_registry_repository.fleet.location
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${each.value}"
}

# The functions that launch, follow or stop runs: create and read Cloud Run jobs and executions...
locals {
  launchers = toset(["fleet-actions", "fleet-jobs", "fleet-api", "fleet-slack"])
}

resource "google_project_iam_member" "launchers_run" {
  for_each = local.launchers
  project  = var.project_id
  role     = "roles/run.developer"
  member   = "serviceAccount:${google_service_account.function[each.key].email}"
}

# ... and run them as the training account (tenant jobs) ...
resource "google_service_account_iam_member" "launchers_act_as_training" {
  for_each           = local.launchers
  service_account_id = google_service_account.training.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.function[each.key].email}"
}

# ... and only fleet-jobs (the model-retrain tick) as the retraining account.
resource "google_service_account_iam_member" "jobs_act_as_retrain" {
  service_account_id = google_service_account.retrain.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.function["fleet-jobs"].email}"
}

# GKE: find the cluster and manage batch Jobs in the fleet-* namespaces (container.developer is
# project-wide in GKE IAM; narrower Kubernetes RBAC can replace it, see README.md).
resource "google_project_iam_member" "launchers_gke" {
  for_each = local.launchers
  project  = var.project_id
  role     = "roles/container.developer"
  member   = "serviceAccount:${google_service_account.function[each.key].email}"
}

# Cloud Build builds the functions as this account (new projects no longer build as the Compute Engine
# default account): it reads the source archive, writes the build's logs and pushes the function images.
resource "google_service_account" "build" {
  account_id   = "fleet-functions-build"
  display_name = "Agent Fleet Manager function builds (${var.environment})"
  depends_on   = [google_project_service.api]
}

resource "google_project_iam_member" "build" {
  # checkov:skip=CKV_GCP_49: Cloud Build's builder role is what a function build needs; it is granted to the build account only, which nothing else runs as
  for_each = toset(["roles/cloudbuild.builds.builder", "roles/logging.logWriter", "roles/artifactregistry.writer"])
  project  = var.project_id
  role     = each.value
  member   = "serviceAccount:${google_service_account.build.email}"
}

resource "google_storage_bucket_iam_member" "build_reads_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.build.email}"
}

# Command channels (README.md, "Agent identity"): each enrolled agent reads its commands from its own
# subscription `agent-commands.<agent_id>`, filtered on its id, which fleet-registrations creates at
# enrollment and shares with the agent's identity (roles/pubsub.subscriber on that subscription alone);
# decommissioning deletes it (fleet-api, fleet-slack). roles/pubsub.editor would also let these functions
# publish anywhere, read any subscription and change topics; this custom role holds only what the code
# calls (shared/services/command_channels.py), and the condition limits it to the agents' channels.
locals {
  command_channel_admins = toset(["fleet-registrations", "fleet-api", "fleet-slack"])
}

resource "google_project_iam_custom_role" "command_channels" {
  project     = var.project_id
  role_id     = "fleetCommandChannels"
  title       = "Agent Fleet Manager command channels"
  description = "Create, read, delete and share (IAM policy) agents' command subscriptions; never consume or publish."
  permissions = [
    "pubsub.subscriptions.create",
    "pubsub.subscriptions.get",
    "pubsub.subscriptions.delete",
    "pubsub.subscriptions.getIamPolicy",
    "pubsub.subscriptions.setIamPolicy",
  ]
}

resource "google_project_iam_member" "command_channels" {
  for_each = local.command_channel_admins
  project  = var.project_id
  role     = google_project_iam_custom_role.command_channels.name
  member   = "serviceAccount:${google_service_account.function[each.key].email}"

  condition {
    title       = "agent command channels only"
    description = "Subscriptions named agent-commands.<agent_id>, never the push subscriptions."
    expression  = "resource.type == \"pubsub.googleapis.com/Subscription\" && resource.name.startsWith(\"projects/${var.project_id}/subscriptions/agent-commands.\")"
  }
}

# Attaching a subscription to agent-commands (pubsub.topics.attachSubscription) is checked on the topic:
# roles/pubsub.subscriber on that one topic carries it (its consume permission acts on subscriptions, so
# on a topic it grants nothing more).
resource "google_pubsub_topic_iam_member" "command_channels_attach" {
  topic  = google_pubsub_topic.topic["agent-commands"].id
  role   = "roles/pubsub.subscriber"
  member = "serviceAccount:${google_service_account.function["fleet-registrations"].email}"
}
