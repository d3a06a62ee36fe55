# Topics, dead-letter topics and push subscriptions, all from the manifest.
#
# Gen2 Pub/Sub triggers cannot carry a dead-letter policy through Terraform, so every event function is
# fed by an explicit push subscription: OIDC-authenticated as the pusher account, with the manifest's
# retry policy and dead-letter topic. The Pub/Sub service agent may publish to the dead-letter topics
# and acknowledge on the source subscriptions (both needed for dead-lettering).

resource "google_pubsub_topic" "topic" {
  # checkov:skip=CKV_GCP_83: Google-managed encryption at rest; messages carry agents' metrics and costs, no secrets. A CMEK key can be added (kms_key_name) where policy requires it
  for_each                   = local.topics
  name                       = each.key
  labels                     = local.labels
  message_retention_duration = try(each.value.dead_letter, false) ? "604800s" : null

  depends_on = [google_project_service.api]
}

resource "google_pubsub_subscription" "push" {
  for_each = local.subscriptions
  name     = each.key
  topic    = google_pubsub_topic.topic[each.value.topic].id
  labels   = local.labels

  ack_deadline_seconds       = each.value.ack_deadline_s
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = google_cloudfunctions2_function.function[each.value.push_to].service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.pusher.email
      audience              = google_cloudfunctions2_function.function[each.value.push_to].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "${each.value.min_backoff_s}s"
    maximum_backoff = "${each.value.max_backoff_s}s"
  }

  dynamic "dead_letter_policy" {
    for_each = try(each.value.dead_letter_topic, null) == null ? [] : [each.value.dead_letter_topic]
    content {
      dead_letter_topic     = google_pubsub_topic.topic[dead_letter_policy.value].id
      max_delivery_attempts = each.value.max_delivery_attempts
    }
  }

  expiration_policy {
    ttl = "" # never expires
  }
}

locals {
  pubsub_agent     = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  dead_letter_subs = { for name, s in local.subscriptions : name => s if try(s.dead_letter_topic, null) != null }
}

resource "google_pubsub_topic_iam_member" "pubsub_agent_dead_letters" {
  for_each = toset([for s in local.dead_letter_subs : s.dead_letter_topic])
  topic    = google_pubsub_topic.topic[each.value].id
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_source" {
  for_each     = local.dead_letter_subs
  subscription = google_pubsub_subscription.push[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}
