# Terraform and providers. `terraform init` needs the Google provider from the registry (not reachable on
# the development machines: there the configuration is checked offline, see README.md).
terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # The offline schema check (tools/terraform_schema.py, README.md) reads the 6.50.0 schema: this
      # allows 6.50 and later 6.x, no 7.x it has not seen. Move the two together.
      version = "~> 6.50"
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
