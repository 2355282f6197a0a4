#!/usr/bin/env bash
# Start libvirtd (and virtlogd) unless it already answers. Uses systemd where it is PID 1; these CI machines and
# containers have no systemd, so the daemons are started directly there.
set -euo pipefail
uri=${1:-qemu:///system}

answers() { virsh -c "$uri" version >/dev/null 2>&1; }

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
