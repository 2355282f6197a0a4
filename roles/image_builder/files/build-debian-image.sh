#!/usr/bin/env bash
# Build a bootable Debian cloud image (qcow2) from a package mirror, without internet access to image hosts.
# The result is a whole-disk image: MBR + one ext4 partition booted by extlinux, with cloud-init (NoCloud and
# ConfigDrive datasources) and openssh-server. Host keys and machine-id are removed, so every server gets its own.
#
# Usage: build-debian-image.sh OUTPUT.qcow2 [SUITE] [MIRROR] [SIZE_MB] [EXTRA_PACKAGES(comma separated)]
set -euo pipefail

out=${1:?output path}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}
size_mb=${4:-2048}
extra=${5:-}

for tool in mmdebstrap mkfs.ext4 extlinux qemu-img sfdisk; do
  command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 3; }
done
mbr=""
for candidate in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/EXTLINUX/mbr.bin /usr/share/syslinux/mbr.bin; do
  [ -f "$candidate" ] && { mbr=$candidate; break; }
done
[ -n "$mbr" ] || { echo "missing syslinux mbr.bin" >&2; exit 3; }

work=$(mktemp -d "${TMPDIR:-/tmp}/vf-image.XXXXXX")
mnt="$work/mnt"
loop=""
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
  if [ -n "$loop" ]; then losetup -d "$loop" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# dbus: without it systemd-logind does not run and the guest ignores the ACPI power button (graceful stop).
packages=systemd-sysv,dbus,qemu-guest-agent,cloud-init,cloud-guest-utils,openssh-server,linux-image-cloud-amd64,ifupdown,isc-dhcp-client,netbase,iproute2,sudo,e2fsprogs
[ -n "$extra" ] && packages="$packages,$extra"

root="$work/root"
echo "==> mmdebstrap $suite from $mirror"
mmdebstrap --quiet --variant=minbase --include="$packages" "$suite" "$root" "$mirror"

echo "==> configuring the guest"
cat > "$root/etc/cloud/cloud.cfg.d/90-virtfleet.cfg" <<'CFG'
# Written by virtfleet.compute's image builder: look only for a local config drive.
datasource_list: [NoCloud, ConfigDrive, None]
# minbase has no locales package; C.UTF-8 is built into libc.
locale: C.UTF-8
CFG
printf 'LABEL=cloudimg-rootfs / ext4 defaults,errors=remount-ro 0 1\n' > "$root/etc/fstab"
printf 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n' > "$root/etc/network/interfaces"
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
echo localhost > "$root/etc/hostname"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sort -V | tail -n 1)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' -printf '%f\n' | sort -V | tail -n 1)
mkdir -p "$root/boot/extlinux"
cat > "$root/boot/extlinux/extlinux.conf" <<CFG
DEFAULT debian
TIMEOUT 1
PROMPT 0
LABEL debian
  LINUX /boot/$kernel
  INITRD /boot/$initrd
  APPEND root=LABEL=cloudimg-rootfs ro console=tty0 console=ttyS0,115200n8 net.ifnames=0
CFG

echo "==> making the disk"
part_offset_mb=1
part="$work/part.img"
truncate -s $(( size_mb - part_offset_mb ))M "$part"
# syslinux 6.04 cannot read ext4's 64bit or metadata_csum_seed features.
mkfs.ext4 -q -L cloudimg-rootfs -O ^64bit,^metadata_csum_seed -d "$root" "$part"
mkdir -p "$mnt"
loop=$(losetup -f --show "$part")
mount "$loop" "$mnt"
extlinux --install "$mnt/boot/extlinux" >/dev/null
umount "$mnt"
losetup -d "$loop"; loop=""

disk="$work/disk.raw"
truncate -s "${size_mb}M" "$disk"
printf 'label: dos\nstart=%s, type=83, bootable\n' "$(( part_offset_mb * 2048 ))" | sfdisk -q "$disk"
dd if="$part" of="$disk" bs=1M seek="$part_offset_mb" conv=notrunc,sparse status=none
dd if="$mbr" of="$disk" bs=440 count=1 conv=notrunc status=none

echo "==> qcow2"
qemu-img convert -c -O qcow2 "$disk" "$out.partial"
mv "$out.partial" "$out"
echo "built $out ($(du -h "$out" | cut -f1))"
