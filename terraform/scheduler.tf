# Cloud Scheduler jobs from the manifest: each publishes {"job": <name>} (attribute job=<name>) to its
# tick topic, which a push subscription delivers to the job's function.

resource "google_cloud_scheduler_job" "tick" {
  for_each    = local.schedules
  name        = "fleet-${each.key}"
  region      = var.region
  description = try(each.value.description, "")
  schedule    = each.value.cron
  time_zone   = each.value.time_zone

  pubsub_target {
    topic_name = google_pubsub_topic.topic[each.value.topic].id
    data       = base64encode(jsonencode({ job = each.key }))
    attributes = { job = each.key }
  }

  depends_on = [google_project_service.api]
}
