#!/usr/bin/env bash
# Start libvirtd (and virtlogd) unless it already answers. Uses systemd where it is PID 1; these CI machines and
# containers have no systemd, so the daemons are started directly there.
set -euo pipefail
uri=${1:-qemu:///system}

answers() { virsh -c "$uri" version >/dev/null 2>&1; }

# udev's default rule gives /dev/kvm to root:kvm 0660. Where udev does not run (containers, CI runners, these
# machines) the node stays root:root 0600, and libvirt then judges its cached QEMU capabilities stale on every call
# ("KVM was enabled when probing, but it is not available now") and re-probes QEMU: about 8 s per domain start. Set
# what udev would, so this machine behaves like a normal host (the compute_node role does the same).
if [ -c /dev/kvm ] && [ ! -S /run/udev/control ]; then
  getent group kvm >/dev/null || groupadd -r kvm
  chown root:kvm /dev/kvm
  chmod 0660 /dev/kvm
fi

if answers; then
  exit 0
fi
if [ "$(ps -o comm= -p 1 2>/dev/null)" = "systemd" ]; then
  systemctl start virtlogd.socket libvirtd.service || systemctl start libvirtd
else
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || libvirtd -d
fi
for _ in $(seq 1 50); do
  answers && exit 0
  sleep 0.2
done
echo "libvirtd did not come up at $uri" >&2
exit 1
