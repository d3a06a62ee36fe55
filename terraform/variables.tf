variable "project_id" {
  description = "The Google Cloud project to deploy into."
  type        = string
}

variable "region" {
  description = "Region of the functions, Pub/Sub, Scheduler, Cloud Run jobs, Artifact Registry and the GKE cluster."
  type        = string
  default     = "us-central1"
}

variable "environment" {
  description = "Environment name (prod, staging...): a label on every resource and a suffix of the names that must be unique."
  type        = string
  default     = "prod"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}$", var.environment))
    error_message = "environment: lowercase letters, digits and '-', 2 to 15 characters, starting with a letter."
  }
}

variable "firestore_location" {
  description = "Location of the Firestore database (a region or a multi-region such as nam5)."
  type        = string
  default     = "nam5"
}

variable "slack_alerts_channel" {
  description = "Default Slack channel of alerts and reports (tenants may override theirs)."
  type        = string
  default     = "#fleet-alerts"
}

variable "slack_approvals_channel" {
  description = "Default Slack channel of approval requests (tenants may override theirs)."
  type        = string
  default     = "#fleet-approvals"
}

variable "gpu_type" {
  description = "Accelerator of the GPU node pool (GKE name: nvidia-l4, nvidia-tesla-t4, nvidia-tesla-a100...)."
  type        = string
  default     = "nvidia-l4"
}

variable "gpu_machine_type" {
  description = "Machine type of the GPU node pool (must carry gpu_type: g2-standard-* for L4, n1-* for T4, a2-* for A100)."
  type        = string
  default     = "g2-standard-8"
}

variable "gpu_zones" {
  description = "Zones of the GPU node pool: those of the region that offer gpu_type (L4 is not in every zone); empty for GKE's default zones."
  type        = list(string)
  default     = []
}

variable "gpu_pool_max_nodes" {
  description = "Most nodes the GPU pool may scale to (it scales from zero)."
  type        = number
  default     = 4

  validation {
    condition     = var.gpu_pool_max_nodes >= 1 && var.gpu_pool_max_nodes <= 100
    error_message = "gpu_pool_max_nodes must be between 1 and 100."
  }
}

variable "cpu_pool_max_nodes" {
  description = "Most nodes the CPU training pool may scale to (it scales from zero)."
  type        = number
  default     = 4
}

variable "function_source_dir" {
  description = "The repository root, zipped as the functions' one source archive."
  type        = string
  default     = ".."
}

variable "training_image_tag" {
  description = "Tag of the training image (built from this repository into Artifact Registry) used by training and retraining jobs."
  type        = string
  default     = "latest"
}

variable "monitoring_notification_channels" {
  description = "Cloud Monitoring notification channels (ids: projects/<project>/notificationChannels/<number>) the fleet's own alert policies notify (monitoring.tf); empty: the policies open incidents but notify no one. Create one with `gcloud beta monitoring channels create` (docs/metrics.md)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.monitoring_notification_channels : can(regex("^projects/[^/]+/notificationChannels/[0-9]+$", c))])
    error_message = "monitoring_notification_channels: ids of the form projects/<project>/notificationChannels/<number>."
  }
}

variable "checkpoint_retention_days" {
  description = "Days a training checkpoint is kept in the checkpoints bucket before it is deleted: at least 8, longer than a Cloud Run task may run (168 h), so no running job loses the checkpoint it would resume from."
  type        = number
  default     = 30

  validation {
    condition     = var.checkpoint_retention_days >= 8 && floor(var.checkpoint_retention_days) == var.checkpoint_retention_days
    error_message = "checkpoint_retention_days: a whole number of days, at least 8 (a run may last 7 days)."
  }
}
