# Cloud Monitoring of the fleet itself, from the structured log lines its functions already write
# (shared/platform/logs.py: one JSON line per invocation on stdout, which Cloud Run parses into jsonPayload,
# its "severity" becoming the entry's severity): log-based metrics, a dashboard, and alert policies that
# notify var.monitoring_notification_channels. docs/metrics.md ("Cloud Monitoring") describes each.
#
# The filters are literal strings on purpose: tests/unit/test_terraform_monitoring.py matches each one, and
# its extractors, against the lines the code really writes. Every line of the fleet carries
# jsonPayload.logger "fleet.<module>"; the function is the entry's resource label service_name (Cloud
# Functions gen2 run as Cloud Run services of the function's name), kept on every time series.

# --- log-based metrics -----------------------------------------------------------------------------

# One per invocation of any function (the invocation envelope's line: only it writes duration_ms).
resource "google_logging_metric" "invocations" {
  name        = "fleet/invocations"
  description = "Invocations of the fleet's functions (one log line each), by outcome (event functions), HTTP status (HTTP functions) and severity (ERROR: failed, Pub/Sub redelivers; or a 5xx)."
  filter      = "resource.type=\"cloud_run_revision\" AND jsonPayload.logger=~\"^fleet[.]\" AND jsonPayload.duration_ms:*"

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Fleet invocations"
    labels {
      key         = "outcome"
      value_type  = "STRING"
      description = "accepted, duplicate, stale, rejected, retry, failed, dead_letter, done... (empty for HTTP functions)"
    }
    labels {
      key         = "status"
      value_type  = "STRING"
      description = "HTTP status of fleet-api, fleet-slack, fleet-console (empty for event functions)"
    }
    labels {
      key         = "severity"
      value_type  = "STRING"
      description = "INFO, WARNING or ERROR"
    }
  }
  label_extractors = {
    outcome  = "EXTRACT(jsonPayload.outcome)"
    status   = "EXTRACT(jsonPayload.status)"
    severity = "EXTRACT(severity)"
  }

  depends_on = [google_project_service.api]
}

# Events and work items refused for good (recorded in the rejections collection), dead letters included
# (code delivery_exhausted).
resource "google_logging_metric" "rejections" {
  name        = "fleet/rejections"
  description = "Events refused for good, by rejection code (delivery_exhausted: a dead letter) and event type."
  filter      = "resource.type=\"cloud_run_revision\" AND jsonPayload.logger=~\"^fleet[.](handlers|actions)$\" AND jsonPayload.code:*"

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Fleet rejections"
    labels {
      key         = "code"
      value_type  = "STRING"
      description = "The rejection code (shared/domain/rejections.py Code)"
    }
    labels {
      key         = "event_type"
      value_type  = "STRING"
      description = "registration, heartbeat, cost, approval, job_progress (empty for dead letters and actions)"
    }
  }
  label_extractors = {
    code       = "EXTRACT(jsonPayload.code)"
    event_type = "EXTRACT(jsonPayload.event_type)"
  }

  depends_on = [google_project_service.api]
}

# From an agent event's publish to its decision committed (and any pause or quarantine it issued published).
resource "google_logging_metric" "enforcement_latency" {
  name            = "fleet/enforcement_latency"
  description     = "Milliseconds from an agent event's publish to its decision committed and its commands published (redeliveries included), by event type, outcome and the commands issued."
  filter          = "resource.type=\"cloud_run_revision\" AND jsonPayload.logger=\"fleet.handlers\" AND jsonPayload.decision_latency_ms:*"
  value_extractor = "EXTRACT(jsonPayload.decision_latency_ms)"

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = "ms"
    display_name = "Fleet enforcement latency"
    labels {
      key         = "event_type"
      value_type  = "STRING"
      description = "registration, heartbeat, cost, approval, job_progress"
    }
    labels {
      key         = "outcome"
      value_type  = "STRING"
      description = "accepted, duplicate, stale, rejected..."
    }
    labels {
      key         = "enforced"
      value_type  = "STRING"
      description = "The commands the decision issued (pause, quarantine, ...; comma-separated), empty when none"
    }
  }
  label_extractors = {
    event_type = "EXTRACT(jsonPayload.event_type)"
    outcome    = "EXTRACT(jsonPayload.outcome)"
    enforced   = "EXTRACT(jsonPayload.enforced)"
  }

  # 10 ms to about 11 minutes, doubling.
  bucket_options {
    exponential_buckets {
      num_finite_buckets = 16
      growth_factor      = 2
      scale              = 10
    }
  }

  depends_on = [google_project_service.api]
}

# Every failed Slack Web API call, whoever made it (shared/slack/web_api.py logs one line each).
resource "google_logging_metric" "slack_failures" {
  name        = "fleet/slack_failures"
  description = "Failed Slack Web API calls, by method, failure (unavailable, refused, auth: the bot token refused) and Slack's error code."
  filter      = "resource.type=\"cloud_run_revision\" AND jsonPayload.logger=\"fleet.slack.web_api\" AND jsonPayload.slack_failure:*"

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Fleet Slack call failures"
    labels {
      key         = "method"
      value_type  = "STRING"
      description = "chat.postMessage, chat.update, files.upload..."
    }
    labels {
      key         = "failure"
      value_type  = "STRING"
      description = "unavailable (retried later), refused (never retried), auth (the token itself refused)"
    }
    labels {
      key         = "error"
      value_type  = "STRING"
      description = "Slack's error code (invalid_auth, channel_not_found...), unavailable when none"
    }
  }
  label_extractors = {
    method  = "EXTRACT(jsonPayload.slack_method)"
    failure = "EXTRACT(jsonPayload.slack_failure)"
    error   = "EXTRACT(jsonPayload.slack_error)"
  }

  depends_on = [google_project_service.api]
}

# Runs of the scheduled jobs (shared/pipeline/ticks.py), the minute job's liveness sweep among them.
resource "google_logging_metric" "scheduled_runs" {
  name        = "fleet/scheduled_runs"
  description = "Runs of the manifest's scheduled jobs (liveness-sweep: the minute job), by job and outcome (done, failed, stale, rejected)."
  filter      = "resource.type=\"cloud_run_revision\" AND jsonPayload.logger=\"fleet.ticks\" AND jsonPayload.job:* AND jsonPayload.outcome:*"

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Fleet scheduled runs"
    labels {
      key         = "job"
      value_type  = "STRING"
      description = "The manifest's schedule name (liveness-sweep, hourly-summary, daily-report, jobs-reconcile, model-retrain)"
    }
    labels {
      key         = "outcome"
      value_type  = "STRING"
      description = "done, failed (retried), stale (skipped: older than max_age_s), rejected (not this function's job)"
    }
  }
  label_extractors = {
    job     = "EXTRACT(jsonPayload.job)"
    outcome = "EXTRACT(jsonPayload.outcome)"
  }

  depends_on = [google_project_service.api]
}

locals {
  # Each metric's type and the Monitoring filter of its time series (the resource is always the revision).
  fleet_metric = {
    for key, m in {
      invocations         = google_logging_metric.invocations.name
      rejections          = google_logging_metric.rejections.name
      enforcement_latency = google_logging_metric.enforcement_latency.name
      slack_failures      = google_logging_metric.slack_failures.name
      scheduled_runs      = google_logging_metric.scheduled_runs.name
    } : key => "metric.type=\"logging.googleapis.com/user/${m}\" AND resource.type=\"cloud_run_revision\""
  }

  # The alert policies' thresholds (docs/metrics.md).
  monitoring = {
    window            = "300s" # the window every count is summed over
    error_ratio       = 0.05   # a function's share of invocations logged at ERROR
    sweep_absent_for  = "300s" # no liveness sweep done for this long
    sweep_job         = "liveness-sweep"
    dead_letter_code  = "delivery_exhausted"
    auth_failure      = "auth"
    auto_close        = "1800s"
    documentation_url = "docs/metrics.md#cloud-monitoring in the fleet's repository"
  }
}

# --- alert policies on the fleet itself --------------------------------------------------------------

resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "Fleet: dead letters (${var.environment})"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.monitoring_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "Messages dead-lettered in ${local.monitoring.window}: more than 0"
    condition_threshold {
      filter          = "${local.fleet_metric.rejections} AND metric.label.code=\"${local.monitoring.dead_letter_code}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = local.monitoring.window
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = local.monitoring.auto_close
  }

  documentation {
    mime_type = "text/markdown"
    content   = "An event exhausted its delivery attempts and was dead-lettered: it is kept in the rejections with code delivery_exhausted and its payload (`GET /v1/rejections?agent_id=...&code=delivery_exhausted`). Find why its function failed in the logs, fix it, then publish it again with `fleetctl rejections replay` (docs/operations.md, Rejections and dead letters). See ${local.monitoring.documentation_url}."
  }
}

resource "google_monitoring_alert_policy" "error_ratio" {
  display_name          = "Fleet: a function's error ratio (${var.environment})"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.monitoring_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "Invocations logged at ERROR over all, per function: above ${local.monitoring.error_ratio}"
    condition_threshold {
      filter             = "${local.fleet_metric.invocations} AND metric.label.severity=\"ERROR\""
      denominator_filter = local.fleet_metric.invocations
      comparison         = "COMPARISON_GT"
      threshold_value    = local.monitoring.error_ratio
      duration           = local.monitoring.window
      aggregations {
        alignment_period     = local.monitoring.window
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
      denominator_aggregations {
        alignment_period     = local.monitoring.window
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["resource.label.service_name"]
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = local.monitoring.auto_close
  }

  documentation {
    mime_type = "text/markdown"
    content   = "More than ${local.monitoring.error_ratio * 100}% of a function's invocations failed for ${local.monitoring.window} (event functions: Pub/Sub redelivers them, and dead-letters them after the manifest's attempts; HTTP functions: answered 5xx). The function is the resource label service_name; its ERROR lines carry the exception. See ${local.monitoring.documentation_url}."
  }
}

resource "google_monitoring_alert_policy" "slack_auth" {
  display_name          = "Fleet: Slack refuses the bot token (${var.environment})"
  combiner              = "OR"
  severity              = "CRITICAL"
  notification_channels = var.monitoring_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "Slack calls refused for the token in ${local.monitoring.window}: more than 0"
    condition_threshold {
      filter          = "${local.fleet_metric.slack_failures} AND metric.label.failure=\"${local.monitoring.auth_failure}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = local.monitoring.window
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
        group_by_fields      = ["metric.label.error"]
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = local.monitoring.auto_close
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Slack refused the bot token (invalid_auth, token_revoked, not_authed...) or no token is set: no alert, approval request or report reaches Slack, and notices that fail are kept as failed. Put a valid token in the slack-bot-token secret (terraform/README.md, Deploy); new instances read it. See ${local.monitoring.documentation_url}."
  }
}

resource "google_monitoring_alert_policy" "no_sweep" {
  display_name          = "Fleet: no liveness sweep (${var.environment})"
  combiner              = "OR"
  severity              = "CRITICAL"
  notification_channels = var.monitoring_notification_channels
  user_labels           = local.labels

  conditions {
    display_name = "No ${local.monitoring.sweep_job} run done for ${local.monitoring.sweep_absent_for}"
    condition_absent {
      filter   = "${local.fleet_metric.scheduled_runs} AND metric.label.job=\"${local.monitoring.sweep_job}\" AND metric.label.outcome=\"done\""
      duration = local.monitoring.sweep_absent_for
      # Summed across revisions and instances: a new deployment's revision takes over the series.
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  alert_strategy {
    auto_close = local.monitoring.auto_close
  }

  documentation {
    mime_type = "text/markdown"
    content   = "The minute job has not finished a liveness sweep for ${local.monitoring.sweep_absent_for}: silent agents are not marked, alert reminders and the Slack outbox wait. Check the Cloud Scheduler job fleet-${local.monitoring.sweep_job}, the tick topic's push subscription, and fleet-sweep's logs (failed runs are retried until max_age_s). See ${local.monitoring.documentation_url}."
  }
}

# --- the dashboard -----------------------------------------------------------------------------------

locals {
  # A time series query of one metric: summed per group over a minute (percentiles for the distribution).
  dashboard_charts = [
    {
      title   = "Invocations per second by function and outcome"
      filter  = local.fleet_metric.invocations
      aligner = "ALIGN_RATE"
      reducer = "REDUCE_SUM"
      plot    = "STACKED_BAR"
      group   = ["resource.label.service_name", "metric.label.outcome"]
    },
    {
      title   = "Invocations logged at ERROR per second, by function"
      filter  = "${local.fleet_metric.invocations} AND metric.label.severity=\"ERROR\""
      aligner = "ALIGN_RATE"
      reducer = "REDUCE_SUM"
      plot    = "LINE"
      group   = ["resource.label.service_name"]
    },
    {
      title   = "Rejections per minute by code (delivery_exhausted: dead letters)"
      filter  = local.fleet_metric.rejections
      aligner = "ALIGN_DELTA"
      reducer = "REDUCE_SUM"
      plot    = "STACKED_BAR"
      group   = ["metric.label.code"]
    },
    {
      title   = "Enforcement latency p50 by event type (ms)"
      filter  = local.fleet_metric.enforcement_latency
      aligner = "ALIGN_DELTA"
      reducer = "REDUCE_PERCENTILE_50"
      plot    = "LINE"
      group   = ["metric.label.event_type"]
    },
    {
      title   = "Enforcement latency p95 by commands issued (ms; empty: none)"
      filter  = local.fleet_metric.enforcement_latency
      aligner = "ALIGN_DELTA"
      reducer = "REDUCE_PERCENTILE_95"
      plot    = "LINE"
      group   = ["metric.label.enforced"]
    },
    {
      title   = "Slack call failures per minute by failure and method"
      filter  = local.fleet_metric.slack_failures
      aligner = "ALIGN_DELTA"
      reducer = "REDUCE_SUM"
      plot    = "STACKED_BAR"
      group   = ["metric.label.failure", "metric.label.method"]
    },
    {
      title   = "Scheduled runs per minute by job and outcome"
      filter  = local.fleet_metric.scheduled_runs
      aligner = "ALIGN_DELTA"
      reducer = "REDUCE_SUM"
      plot    = "STACKED_BAR"
      group   = ["metric.label.job", "metric.label.outcome"]
    },
  ]
}

resource "google_monitoring_dashboard" "fleet" {
  dashboard_json = jsonencode({
    displayName = "Agent Fleet Manager (${var.environment})"
    mosaicLayout = {
      columns = 48
      tiles = [
        for i, chart in local.dashboard_charts : {
          xPos   = (i % 2) * 24
          yPos   = floor(i / 2) * 16
          width  = 24
          height = 16
          widget = {
            title = chart.title
            xyChart = {
              dataSets = [{
                plotType = chart.plot
                timeSeriesQuery = {
                  timeSeriesFilter = {
                    filter = chart.filter
                    aggregation = {
                      alignmentPeriod    = "60s"
                      perSeriesAligner   = chart.aligner
                      crossSeriesReducer = chart.reducer
                      groupByFields      = chart.group
                    }
                  }
                }
              }]
              yAxis = { scale = "LINEAR" }
            }
          }
        }
      ]
    }
  })

  depends_on = [google_project_service.api]
}
