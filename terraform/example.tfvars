# terraform plan -var-file=example.tfvars (copy it and set your project).
project_id              = "my-fleet-project"
region                  = "us-central1"
environment             = "prod"
firestore_location      = "nam5"
slack_alerts_channel    = "#fleet-alerts"
slack_approvals_channel = "#fleet-approvals"
gpu_types               = ["nvidia-l4"]
gpu_zones               = { "nvidia-l4" = ["us-central1-a", "us-central1-c"] }
gpu_pool_max_nodes      = 4
cpu_pool_max_nodes      = 4
# Where the fleet's own alerts go (docs/metrics.md, "Cloud Monitoring"): `gcloud beta monitoring channels list`.
monitoring_notification_channels = []
# Days a training checkpoint is kept (gs://<project>-fleet-checkpoints/<tenant>/<job id>/).
checkpoint_retention_days = 30
