# The Sudo host: an unprivileged Debian 12 LXC. Everything a node differs in is a variable;
# terraform.tfvars.example has an example of each, terraform.tfvars (never committed) the real ones.

variable "proxmox_endpoint" {
  type        = string
  description = "The Proxmox VE API, e.g. https://pve.example.lan:8006/ (the token comes from PROXMOX_VE_API_TOKEN)."

  validation {
    condition     = can(regex("^https://[^/]+(:[0-9]+)?/?$", var.proxmox_endpoint))
    error_message = "proxmox_endpoint must be an https:// URL of the node or cluster, such as https://pve.example.lan:8006/."
  }
}

variable "proxmox_insecure" {
  type        = bool
  description = "Accept the node's self-signed TLS certificate (a fresh Proxmox install has one)."
  default     = false
}

variable "node_name" {
  type        = string
  description = "The Proxmox node that runs the container, as `pvecm nodes` or the web UI names it."

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}$", var.node_name))
    error_message = "node_name must be a node's host name (letters, digits and dashes)."
  }
}

variable "vm_id" {
  type        = number
  description = "The container's VMID; host-prep.sh and apply-features.sh are given the same one."

  validation {
    condition     = var.vm_id >= 100 && var.vm_id <= 999999999 && floor(var.vm_id) == var.vm_id
    error_message = "vm_id must be a whole number from 100 to 999999999 (Proxmox reserves 0-99)."
  }
}

variable "hostname" {
  type        = string
  description = "The container's host name."
  default     = "sudo"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.hostname))
    error_message = "hostname must be one DNS label: lowercase letters, digits and inner dashes."
  }
}

variable "template_file_id" {
  type        = string
  description = "The Debian 12 template, as `pveam list <storage>` shows it, e.g. local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst."

  validation {
    condition     = can(regex("^[a-zA-Z0-9_.-]+:vztmpl/debian-12-.+\\.tar\\.(zst|gz|xz)$", var.template_file_id))
    error_message = "template_file_id must be a Debian 12 template volume, <storage>:vztmpl/debian-12-...tar.zst (download it with `pveam download`)."
  }
}

variable "datastore_id" {
  type        = string
  description = "The storage of the root filesystem (the database and the families' Docker volumes live there), e.g. local-lvm."
  default     = "local-lvm"
}

variable "disk_size_gb" {
  type        = number
  description = "Size of the root filesystem (GB): the packages, the Hermes image (about 1 GB) and every family's data volume."
  default     = 32

  validation {
    condition     = var.disk_size_gb >= 16 && floor(var.disk_size_gb) == var.disk_size_gb
    error_message = "disk_size_gb must be a whole number of at least 16."
  }
}

variable "cores" {
  type        = number
  description = "CPU cores (one agent at work uses about one core)."
  default     = 4

  validation {
    condition     = var.cores >= 2 && var.cores <= 128 && floor(var.cores) == var.cores
    error_message = "cores must be a whole number from 2 to 128."
  }
}

variable "memory_mb" {
  type        = number
  description = "Dedicated memory (MB): about 1 GB for the host daemons, plus up to runtime.memory (1 GB) per awake family."
  default     = 8192

  validation {
    condition     = var.memory_mb >= 4096 && floor(var.memory_mb) == var.memory_mb
    error_message = "memory_mb must be a whole number of at least 4096."
  }
}

variable "swap_mb" {
  type        = number
  description = "Swap of the container (MB)."
  default     = 1024

  validation {
    condition     = var.swap_mb >= 0 && floor(var.swap_mb) == var.swap_mb
    error_message = "swap_mb must be a whole number, 0 or more."
  }
}

variable "bridge" {
  type        = string
  description = "The bridge (or SDN vnet) of the container's eth0, e.g. vmbr0."
  default     = "vmbr0"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_.-]{1,15}$", var.bridge))
    error_message = "bridge must be an interface name of at most 15 characters, such as vmbr0."
  }
}

variable "vlan_id" {
  type        = number
  description = "VLAN tag of eth0; null for none."
  default     = null

  validation {
    condition     = var.vlan_id == null ? true : (var.vlan_id >= 1 && var.vlan_id <= 4094)
    error_message = "vlan_id must be from 1 to 4094, or null."
  }
}

variable "ipv4_address" {
  type        = string
  description = "eth0's IPv4 address: \"dhcp\", or an address with its prefix, e.g. 192.0.2.20/24 (then set ipv4_gateway)."
  default     = "dhcp"

  validation {
    condition     = var.ipv4_address == "dhcp" || can(cidrhost(var.ipv4_address, 0))
    error_message = "ipv4_address must be \"dhcp\" or an address with its prefix, such as 192.0.2.20/24."
  }
}

variable "ipv4_gateway" {
  type        = string
  description = "The IPv4 gateway with a static ipv4_address; null with DHCP."
  default     = null

  validation {
    condition     = var.ipv4_gateway == null ? true : can(regex("^[0-9]{1,3}(\\.[0-9]{1,3}){3}$", var.ipv4_gateway))
    error_message = "ipv4_gateway must be an IPv4 address such as 192.0.2.1, or null."
  }
}

variable "ssh_public_keys" {
  type        = list(string)
  description = "Public keys allowed to log in as root (empty: use `pct enter <vmid>` from the node's shell)."
  default     = []
}

variable "tags" {
  type        = list(string)
  description = "Proxmox tags of the container (Proxmox lowercases and sorts them, so give them that way)."
  default     = ["sudo", "terraform"]

  validation {
    condition     = alltrue([for t in var.tags : can(regex("^[a-z0-9_][a-z0-9_.+-]*$", t))])
    error_message = "tags must be lowercase (letters, digits, _ . + -): Proxmox lowercases them and would show a change on every plan."
  }
}

variable "start_on_boot" {
  type        = bool
  description = "Start the container when the node boots."
  default     = true
}
