# The GKE cluster of GPU training jobs (shared/launchers/gke.py): Workload Identity, and a spot and an
# on-demand node pool per machine the policy can choose (below), all scaling from zero (nothing runs,
# nothing is paid for nodes, while no job does).

resource "google_service_account" "nodes" {
  account_id   = "fleet-gke-nodes"
  display_name = "Agent Fleet Manager GKE nodes (${var.environment})"
  depends_on   = [google_project_service.api]
}

# Nodes write their logs and metrics, and pull the training image.
resource "google_project_iam_member" "nodes" {
  for_each = toset(["roles/logging.logWriter", "roles/monitoring.metricWriter", "roles/artifactregistry.reader"])
  project  = var.project_id
  role     = each.value
  member   = "serviceAccount:${google_service_account.nodes.email}"
}

resource "google_container_cluster" "gpu" {
  # checkov:skip=CKV_GCP_65: Google Groups for RBAC needs the organization's Workspace domain (authenticator_groups_config); the fleet's own access is through IAM, set it where a groups domain exists
  name     = "fleet-gpu-${var.environment}"
  location = var.region

  # The default pool is replaced by the pools below.
  remove_default_node_pool = true
  initial_node_count       = 1
  deletion_protection      = true
  enable_shielded_nodes    = true
  networking_mode          = "VPC_NATIVE"
  resource_labels          = local.labels

  ip_allocation_policy {}

  enable_intranode_visibility = true

  master_auth {
    client_certificate_config {
      issue_client_certificate = false
    }
  }

  release_channel {
    channel = "REGULAR"
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }

  private_cluster_config {
    enable_private_nodes    = true
    enable_private_endpoint = false
    master_ipv4_cidr_block  = "172.16.0.32/28"
  }

  master_authorized_networks_config {
    # The launchers reach the control plane from Google's network (Cloud Functions); narrow this to your
    # own ranges if the functions egress through a VPC connector.
    gcp_public_cidrs_access_enabled = true
  }

  network_policy {
    enabled  = true
    provider = "CALICO"
  }

  # Network policy on the nodes needs its add-on.
  addons_config {
    network_policy_config {
      disabled = false
    }
  }

  binary_authorization {
    evaluation_mode = "PROJECT_SINGLETON_POLICY_ENFORCE"
  }

  node_config {
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }
    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }

  depends_on = [google_project_service.api]
}

# Node pools: what shared/domain/job_policy.py schedules and shared/domain/job_costs.py prices. GKE bills
# the node a pod lands on, and the estimate prices the cheapest machine of the GPU type's family that fits
# the job, spot or on demand: so every machine of the price table (shared/data/machine_prices.yaml) has a
# spot and an on-demand pool, for each accelerator in var.gpu_types and for CPU jobs, each scaling from
# zero (an idle pool costs nothing). tests/unit/test_terraform_pools.py holds the two to each other.
locals {
  # Machine type -> the accelerator it carries and how many (the GKE accelerator name; null: CPU only).
  machine_shapes = {
    "e2-standard-2"  = { accelerator = null, gpus = 0 }
    "e2-standard-4"  = { accelerator = null, gpus = 0 }
    "e2-standard-8"  = { accelerator = null, gpus = 0 }
    "e2-standard-16" = { accelerator = null, gpus = 0 }
    "e2-standard-32" = { accelerator = null, gpus = 0 }
    "g2-standard-4"  = { accelerator = "nvidia-l4", gpus = 1 }
    "g2-standard-8"  = { accelerator = "nvidia-l4", gpus = 1 }
    "g2-standard-12" = { accelerator = "nvidia-l4", gpus = 1 }
    "g2-standard-16" = { accelerator = "nvidia-l4", gpus = 1 }
    "g2-standard-24" = { accelerator = "nvidia-l4", gpus = 2 }
    "g2-standard-32" = { accelerator = "nvidia-l4", gpus = 1 }
    "g2-standard-48" = { accelerator = "nvidia-l4", gpus = 4 }
    "g2-standard-96" = { accelerator = "nvidia-l4", gpus = 8 }
    "n1-standard-4"  = { accelerator = "nvidia-tesla-t4", gpus = 1 }
    "n1-standard-8"  = { accelerator = "nvidia-tesla-t4", gpus = 1 }
    "n1-standard-16" = { accelerator = "nvidia-tesla-t4", gpus = 2 }
    "n1-standard-32" = { accelerator = "nvidia-tesla-t4", gpus = 4 }
    "a2-highgpu-1g"  = { accelerator = "nvidia-tesla-a100", gpus = 1 }
    "a2-highgpu-2g"  = { accelerator = "nvidia-tesla-a100", gpus = 2 }
    "a2-highgpu-4g"  = { accelerator = "nvidia-tesla-a100", gpus = 4 }
    "a2-highgpu-8g"  = { accelerator = "nvidia-tesla-a100", gpus = 8 }
    "a3-highgpu-1g"  = { accelerator = "nvidia-h100-80gb", gpus = 1 }
    "a3-highgpu-2g"  = { accelerator = "nvidia-h100-80gb", gpus = 2 }
    "a3-highgpu-4g"  = { accelerator = "nvidia-h100-80gb", gpus = 4 }
    "a3-highgpu-8g"  = { accelerator = "nvidia-h100-80gb", gpus = 8 }
  }
  # Sold only as spot (or Flex-start), never on demand: no on-demand pool (shared/domain/job_costs.py
  # SPOT_ONLY_MACHINES; the job policy refuses such a job on demand).
  spot_only_machines = ["a3-highgpu-1g", "a3-highgpu-2g", "a3-highgpu-4g"]
  # "<machine>-spot" and "<machine>-on-demand" for every GPU machine of var.gpu_types.
  gpu_pools = {
    for pair in setproduct(keys(local.machine_shapes), ["spot", "on-demand"]) :
    "${pair[0]}-${pair[1]}" => merge(local.machine_shapes[pair[0]], { machine_type = pair[0], spot = pair[1] == "spot" })
    if local.machine_shapes[pair[0]].accelerator != null && contains(var.gpu_types, coalesce(local.machine_shapes[pair[0]].accelerator, "none")) && !(pair[1] == "on-demand" && contains(local.spot_only_machines, pair[0]))
  }
  cpu_pools = {
    for pair in setproduct(keys(local.machine_shapes), ["spot", "on-demand"]) :
    "${pair[0]}-${pair[1]}" => { machine_type = pair[0], spot = pair[1] == "spot" }
    if local.machine_shapes[pair[0]].accelerator == null
  }
}

resource "google_container_node_pool" "gpu" {
  for_each = local.gpu_pools
  name     = "gpu-${each.key}"
  cluster  = google_container_cluster.gpu.id
  location = var.region
  # Zones that offer the accelerator (not every zone of a region carries every GPU).
  node_locations = lookup(var.gpu_zones, each.value.accelerator, null)

  lifecycle {
    precondition {
      condition     = length(lookup(var.gpu_zones, each.value.accelerator, [])) > 0
      error_message = "gpu_zones must list the zones of every entry of gpu_types (not every zone carries every GPU)."
    }
  }

  autoscaling {
    total_min_node_count = 0
    total_max_node_count = var.gpu_pool_max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = each.value.machine_type
    spot            = each.value.spot
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    # GKE labels the nodes cloud.google.com/gke-accelerator=<type> and, spot, cloud.google.com/gke-spot=true:
    # the training Jobs select both (shared/launchers/gke_manifest.py).
    labels = local.labels

    guest_accelerator {
      type  = each.value.accelerator
      count = each.value.gpus
      gpu_driver_installation_config {
        gpu_driver_version = "DEFAULT"
      }
    }

    # GKE taints GPU nodes with nvidia.com/gpu=present:NoSchedule; the training Jobs tolerate it.
    taint {
      key    = "nvidia.com/gpu"
      value  = "present"
      effect = "NO_SCHEDULE"
    }

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_container_node_pool" "cpu" {
  for_each = local.cpu_pools
  name     = "cpu-${each.key}"
  cluster  = google_container_cluster.gpu.id
  location = var.region

  autoscaling {
    total_min_node_count = 0
    total_max_node_count = var.cpu_pool_max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = each.value.machine_type
    spot            = each.value.spot
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels          = local.labels

    shielded_instance_config {
      enable_secure_boot          = true
      enable_integrity_monitoring = true
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}
