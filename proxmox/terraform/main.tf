# The Sudo host: an unprivileged Debian 12 LXC, created with an API token.
#
# What a token cannot do is left out on purpose and done on the node's shell as root
# (apply-features.sh): the features Docker needs (nesting=1, keyctl=1) and the bind mounts.
# Terraform ignores both afterwards, so a later plan neither removes them nor fails on them.
resource "proxmox_virtual_environment_container" "sudo" {
  node_name     = var.node_name
  vm_id         = var.vm_id
  description   = "Sudo: the family assistant host (Debian 12, Docker, the sudo-server packages). Managed by Terraform; features and bind mounts by apply-features.sh."
  tags          = var.tags
  unprivileged  = true
  start_on_boot = var.start_on_boot
  started       = true

  operating_system {
    template_file_id = var.template_file_id
    type             = "debian"
  }

  cpu {
    cores = var.cores
  }

  memory {
    dedicated = var.memory_mb
    swap      = var.swap_mb
  }

  disk {
    datastore_id = var.datastore_id
    size         = var.disk_size_gb
  }

  network_interface {
    name    = "eth0"
    bridge  = var.bridge
    vlan_id = var.vlan_id
  }

  initialization {
    hostname = var.hostname

    ip_config {
      ipv4 {
        address = var.ipv4_address
        gateway = var.ipv4_address == "dhcp" ? null : var.ipv4_gateway
      }
    }

    user_account {
      keys = var.ssh_public_keys
    }
  }

  lifecycle {
    # Set by apply-features.sh as root@pam (an API token may not): not Terraform's to undo.
    ignore_changes = [features, mount_point]

    precondition {
      condition     = var.ipv4_address == "dhcp" || var.ipv4_gateway != null
      error_message = "A static ipv4_address needs ipv4_gateway."
    }
  }
}
