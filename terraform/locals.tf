# Everything named in the one topology manifest (../topology.yaml), as maps keyed by name for for_each:
# nothing here is spelled again by hand. Local-only parts (the benchmark baseline) are left out.
locals {
  manifest = yamldecode(file("${path.module}/../topology.yaml"))

  topics        = { for t in local.manifest.topics : t.name => t if !try(t.local_only, false) }
  functions     = { for f in local.manifest.functions : f.name => f if !try(f.local_only, false) }
  subscriptions = { for s in local.manifest.subscriptions : s.name => s if !try(s.local_only, false) }
  schedules     = { for j in try(local.manifest.schedules, []) : j.name => j }
  secrets       = { for s in try(local.manifest.secrets, []) : s.name => s }
  buckets       = { for b in try(local.manifest.buckets, []) : b.name => b }
  run_jobs      = { for j in try(local.manifest.run_jobs, []) : j.name => j }
  # Keyed by content, so adding an index never renames (and rebuilds) the others.
  indexes = {
    for idx in try(local.manifest.firestore_indexes, []) :
    "${idx.collection}-${join("-", [for f in idx.fields : "${f.field}_${f.order}"])}" => idx
  }
  ttls = { for t in try(local.manifest.firestore_ttl, []) : t.collection_group => t }

  # Functions delivered by Pub/Sub push (CloudEvent signature) and those serving HTTPS.
  event_functions = { for name, f in local.functions : name => f if f.signature == "cloudevent" }
  http_functions  = { for name, f in local.functions : name => f if f.signature == "http" }

  # (function, secret) pairs: each function reads exactly the secrets it lists.
  function_secrets = merge([
    for name, f in local.functions : { for s in try(f.secrets, []) : "${name}/${s}" => { function = name, secret = s } }
  ]...)
  # (function, topic) pairs: each function publishes to exactly the topics it lists.
  function_publishes = merge([
    for name, f in local.functions : { for t in try(f.publishes, []) : "${name}/${t}" => { function = name, topic = t } }
  ]...)
  # Topics agents publish to (those carrying an event type, except the commands they receive).
  # (A conditional, not &&: Terraform evaluates both sides of && and topics without event_type would fail.)
  agent_topics = { for name, t in local.topics : name => t if(try(t.event_type, null) != null ? t.event_type != "command" : false) }

  # Service account ids: at most 30 characters.
  function_sa = { for name, _ in local.functions : name => substr("fn-${name}", 0, 30) }

  labels = {
    app         = "agent-fleet-manager"
    environment = var.environment
  }

  models_bucket = "${var.project_id}-fleet-models"
  image_repo    = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.fleet.repository_id}"
  gke_cluster   = "projects/${var.project_id}/locations/${var.region}/clusters/${google_container_cluster.gpu.name}"

  # Training checkpoints (gs://<bucket>/<tenant>/<job id>/), the models bucket's sibling.
  checkpoints_bucket = "${var.project_id}-${local.buckets["fleet-checkpoints"].name}"

  # The environment every function gets (shared/platform/settings.py and the launchers read these).
  function_env = {
    GOOGLE_CLOUD_PROJECT           = var.project_id
    FLEET_ENVIRONMENT              = var.environment
    FLEET_MODELS_BUCKET            = local.models_bucket
    FLEET_CHECKPOINTS_BUCKET       = local.checkpoints_bucket
    FLEET_SLACK_ALERTS_CHANNEL     = var.slack_alerts_channel
    FLEET_SLACK_APPROVALS_CHANNEL  = var.slack_approvals_channel
    FLEET_GKE_CLUSTER              = local.gke_cluster
    FLEET_CLOUDRUN_REGION          = var.region
    FLEET_GKE_GPU_TYPES            = join(",", var.gpu_types)
    FLEET_TRAINING_IMAGE           = "${local.image_repo}/training:${var.training_image_tag}"
    FLEET_TRAINING_SERVICE_ACCOUNT = google_service_account.training.email
    FLEET_RETRAIN_SERVICE_ACCOUNT  = google_service_account.retrain.email
    FLEET_RETRAIN_BACKEND          = "cloudrun"
  }
}
