terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    proxmox = {
      source  = "bpg/proxmox"
      version = "0.78.0"
    }
  }
}

# The API token comes from the environment, never from a file in this repository:
#   export PROXMOX_VE_API_TOKEN='terraform@pve!sudo=<uuid>'
provider "proxmox" {
  endpoint = var.proxmox_endpoint
  insecure = var.proxmox_insecure
}
