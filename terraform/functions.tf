# The functions (gen2), from one source archive named by its content hash, each with the manifest's
# entry point, memory, timeout, instances and secrets, and its own service account.

data "archive_file" "source" {
  type        = "zip"
  source_dir  = var.function_source_dir
  output_path = "${path.module}/.build/source.zip"
  # The tool virtualenvs (the Makefile's .venv-*) and tools/ are developers' only, never deployed; so is
  # what a local editable install or build of the SDK leaves in sdk/ (the build makes its own).
  excludes = [
    ".git", ".venv", ".venv-checkov", ".venv-tfschema", ".venv-uv", ".venv-sdk-latest", ".stack", ".stack-bench",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", "terraform", "tests", "docs", "emulators", "node_modules", "tools",
    "sdk/build", "sdk/fleet_agent.egg-info",
  ]
}

resource "google_storage_bucket" "source" {
  # checkov:skip=CKV_GCP_62: only the deployment writes and Cloud Build reads this bucket; access is in Cloud Audit Logs (enable Data Access logs for storage.googleapis.com to keep reads), no separate log bucket
  name                        = "${var.project_id}-fleet-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = local.labels

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      num_newer_versions = 5
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_storage_bucket_object" "source" {
  # Named by content: a change of code is a new object, and so a new deployment of every function.
  name   = "source-${data.archive_file.source.output_sha256}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.source.output_path
}

resource "google_cloudfunctions2_function" "function" {
  # checkov:skip=CKV_GCP_124: ingress is internal-only for every function but fleet-slack, fleet-api, fleet-console and fleet-otlp, which Slack, API and console users and agents' OTLP exporters reach from the internet and which authenticate each request themselves
  for_each = local.functions
  name     = each.key
  location = var.region
  labels   = local.labels

  build_config {
    runtime     = "python311"
    entry_point = each.value.entry_point
    # The entry points live in functions/main.py; requirements.txt at the root lists what to install.
    environment_variables = { GOOGLE_FUNCTION_SOURCE = "functions/main.py" }
    service_account       = google_service_account.build.id
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory               = each.value.memory
    timeout_seconds                = each.value.timeout_s
    min_instance_count             = try(each.value.min_instances, 0)
    max_instance_count             = try(each.value.max_instances, 10)
    service_account_email          = google_service_account.function[each.key].email
    all_traffic_on_latest_revision = true
    # Pub/Sub push in this project counts as internal traffic; only the public HTTPS functions take the internet.
    ingress_settings                 = try(each.value.public, false) ? "ALLOW_ALL" : "ALLOW_INTERNAL_ONLY"
    environment_variables            = local.function_env
    max_instance_request_concurrency = 1

    dynamic "secret_environment_variables" {
      for_each = toset(try(each.value.secrets, []))
      content {
        # shared/platform/settings.py reads a secret from the variable of its name, upper-cased.
        key        = upper(replace(secret_environment_variables.value, "-", "_"))
        project_id = var.project_id
        secret     = google_secret_manager_secret.secret[secret_environment_variables.value].secret_id
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_project_service.api,
    google_secret_manager_secret_iam_member.function_reads,
    google_project_iam_member.build,
    google_storage_bucket_iam_member.build_reads_source,
  ]
}

# Event functions: only the push subscriptions' account may invoke them (authenticated push).
resource "google_cloud_run_service_iam_member" "push_invokes" {
  for_each = local.event_functions
  location = var.region
  service  = google_cloudfunctions2_function.function[each.key].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.pusher.email}"
}

# HTTPS functions that Slack, API and console users, agents' OTLP exporters and the dead-letter push reach.
# fleet-slack, fleet-api, fleet-console and fleet-otlp are public at the HTTP layer and authenticate every
# request themselves (Slack's signature; API keys, the console's in its session cookie; agents' OTLP tokens);
# fleet-dead-letters is reached by authenticated push only.
resource "google_cloud_run_service_iam_member" "public_invokes" {
  for_each = { for name, f in local.http_functions : name => f if try(f.public, false) }
  location = var.region
  service  = google_cloudfunctions2_function.function[each.key].name
  role     = "roles/run.invoker"
  member   = "allUsers" # checkov:skip=CKV_GCP_102: public at the HTTP layer on purpose; each request is authenticated by the function (Slack signature, API key)
}

resource "google_cloud_run_service_iam_member" "private_http_invokes" {
  for_each = { for name, f in local.http_functions : name => f if !try(f.public, false) }
  location = var.region
  service  = google_cloudfunctions2_function.function[each.key].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.pusher.email}"
}
