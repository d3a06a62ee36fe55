# The GKE cluster of GPU training jobs (shared/launchers/gke.py): Workload Identity, a GPU node pool and a
# CPU pool, both spot, scaling from zero (nothing runs, nothing is paid for nodes, while no job does).

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

  # The default pool is replaced by the two pools below.
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

resource "google_container_node_pool" "gpu" {
  name     = "gpu-${var.gpu_type}"
  cluster  = google_container_cluster.gpu.id
  location = var.region
  # Zones that offer the accelerator (not every zone of a region carries every GPU); empty: GKE's default.
  node_locations = length(var.gpu_zones) > 0 ? var.gpu_zones : null

  autoscaling {
    total_min_node_count = 0
    total_max_node_count = var.gpu_pool_max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type    = var.gpu_machine_type
    spot            = true
    service_account = google_service_account.nodes.email
    oauth_scopes    = ["https://www.googleapis.com/auth/cloud-platform"]
    labels          = local.labels

    guest_accelerator {
      type  = var.gpu_type
      count = 1
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
  name     = "cpu-spot"
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
    machine_type    = "e2-standard-8"
    spot            = true
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
