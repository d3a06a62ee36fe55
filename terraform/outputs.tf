output "api_url" {
  description = "The REST API (fleet-api); send `Authorization: Bearer <key>` (fleetctl keys create)."
  value       = google_cloudfunctions2_function.function["fleet-api"].service_config[0].uri
}

output "console_url" {
  description = "The web console (fleet-console); sign in with an API key (fleetctl keys create)."
  value       = google_cloudfunctions2_function.function["fleet-console"].service_config[0].uri
}

output "otlp_traces_url" {
  description = "OTLP/HTTP traces of OpenTelemetry-instrumented agents (fleet-otlp): OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, with a token of fleet-agent otlp-token (docs/otlp.md)."
  value       = "${google_cloudfunctions2_function.function["fleet-otlp"].service_config[0].uri}/v1/traces"
}

output "slack_request_url" {
  description = "The Slack app's request URL (slash commands and interactivity)."
  value       = "${google_cloudfunctions2_function.function["fleet-slack"].service_config[0].uri}/slack/events"
}

output "agent_topics" {
  description = "Topics agents publish to (registrations, heartbeats, costs, approvals, job progress), by event type."
  value       = { for name, t in local.agent_topics : t.event_type => google_pubsub_topic.topic[name].name }
}

output "command_topic" {
  description = "The topic agents receive their commands on (each enrolled agent reads its own subscription agent-commands.<agent_id>)."
  value       = google_pubsub_topic.topic["agent-commands"].id
}

output "models_bucket" {
  description = "Cloud Storage bucket of the learned models' bytes."
  value       = google_storage_bucket.models.name
}

output "checkpoints_bucket" {
  description = "Cloud Storage bucket of the training runs' checkpoints (gs://<bucket>/<tenant>/<job id>/)."
  value       = google_storage_bucket.checkpoints.name
}

output "training_image" {
  description = "Where to push the training image (docker push), used by training and retraining jobs."
  value       = local.function_env.FLEET_TRAINING_IMAGE
}

output "monitoring_dashboard" {
  description = "The fleet's Cloud Monitoring dashboard (monitoring.tf, docs/metrics.md)."
  value       = "https://console.cloud.google.com/monitoring/dashboards/builder/${element(split("/", google_monitoring_dashboard.fleet.id), 3)}?project=${var.project_id}"
}
