output "vmid" {
  description = "The container's VMID: give it to apply-features.sh."
  value       = proxmox_virtual_environment_container.sudo.vm_id
}

output "ip" {
  description = "eth0's IPv4 address (with DHCP, as the node last saw it; null until it has one)."
  value = (
    var.ipv4_address == "dhcp"
    ? try(proxmox_virtual_environment_container.sudo.ipv4["eth0"], null)
    : split("/", var.ipv4_address)[0]
  )
}
