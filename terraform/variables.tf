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

variable "gpu_types" {
  description = "Accelerators the GKE cluster offers (GKE names): each gets a spot and an on-demand node pool per machine of its family in gke.tf (those the job policy prices; H100 on demand only as a3-highgpu-8g), and each needs its zones in gpu_zones. The functions get the list (FLEET_GKE_GPU_TYPES): the job policy refuses GPU types not deployed."
  type        = list(string)
  default     = ["nvidia-l4"]

  validation {
    condition     = alltrue([for t in var.gpu_types : contains(["nvidia-l4", "nvidia-tesla-t4", "nvidia-tesla-a100", "nvidia-h100-80gb"], t)])
    error_message = "gpu_types may hold nvidia-l4, nvidia-tesla-t4, nvidia-tesla-a100 and nvidia-h100-80gb."
  }
}

variable "gpu_zones" {
  description = "Zones of each accelerator's node pools: those of the region that offer it (not every zone carries every GPU). Every entry of gpu_types must have one (checked by a precondition of its node pools)."
  type        = map(list(string))
  default     = {}
}

variable "gpu_pool_max_nodes" {
  description = "Most nodes each GPU node pool may scale to (each scales from zero)."
  type        = number
  default     = 4

  validation {
    condition     = var.gpu_pool_max_nodes >= 1 && var.gpu_pool_max_nodes <= 100
    error_message = "gpu_pool_max_nodes must be between 1 and 100."
  }
}

variable "cpu_pool_max_nodes" {
  description = "Most nodes each CPU training pool may scale to (each scales from zero)."
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
