# Terraform and providers. `terraform init` needs the Google provider from the registry (not reachable on
# the development machines: there the configuration is checked offline, see README.md).
terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.10, < 8"
    }
    archive = {
      source  = "hashicorp/archive"
      version = ">= 2.4, < 3"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
