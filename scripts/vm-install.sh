#!/usr/bin/env bash
# Installs what the VM tests (tests/cli/vm.rs, scripts/vm-run.sh) need on a Debian bookworm
# machine: Debian's kernel (linux-image-amd64) booted by virtme-ng under qemu (TCG), with LVM
# thin tools and ZFS (zfs-dkms built for that kernel) on the shared root filesystem.
# Idempotent: what is there already is not installed again. Prints how long each step took.
#
#   scripts/vm-install.sh            # as root
#   WYNG_VM_VENV=/opt/wyng-vm/venv   # where virtme-ng goes (its bin/ must be on PATH: vng
#                                    # calls virtme-run); scripts/vm-run.sh finds it there
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
venv="${WYNG_VM_VENV:-/opt/wyng-vm/venv}"
t0=$SECONDS
step() { echo "== vm-install: $1 ($((SECONDS - t0)) s)"; }

# bookworm-backports (qemu) and contrib (zfs) on the mirror the image already uses.
mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
  /etc/apt/sources.list.d/*.sources | grep -oE '[a-z]+://[^ ]+/debian/?' | grep -v security |
  head -n1 || true)
mirror="${mirror:-http://deb.debian.org/debian}"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
list=/etc/apt/sources.list.d/wyng-vm.sources
if [ ! -e "$list" ]; then
  # Only what no source has yet (apt warns about a suite configured twice).
  bpo="main contrib"
  grep -qsE '^Suites:.*bookworm-backports|^deb .* bookworm-backports ' /etc/apt/sources.list \
    /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources && bpo="contrib"
  step "adding bookworm-backports ($bpo) and bookworm contrib from $mirror"
  cat >"$list" <<SOURCES
Types: deb
URIs: $mirror
Suites: bookworm-backports
Components: $bpo
Signed-By: $keyring

Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: contrib
Signed-By: $keyring
SOURCES
  apt-get update -qq
fi

need=()
for p in lvm2 thin-provisioning-tools busybox-static linux-image-amd64 linux-headers-amd64 \
  python3-venv dkms zfs-dkms zfsutils-linux; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
  step "apt: ${need[*]}"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian 12's own qemu (7.2) would remove the image's newer qemu-utils: backports, alone.
if ! dpkg -s qemu-system-x86 >/dev/null 2>&1; then
  step "apt: qemu-system-x86 from bookworm-backports"
  apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
fi

kver=$(dpkg -L "$(dpkg-query -W -f='${Depends}' linux-image-amd64 | grep -oE 'linux-image-[0-9][^ ,]*')" |
  sed -nE 's#^/boot/vmlinuz-(.*)$#\1#p' | head -n1)
[ -n "$kver" ] || { echo "vm-install: no kernel found from linux-image-amd64" >&2; exit 1; }
if ! modinfo -k "$kver" zfs >/dev/null 2>&1; then
  step "dkms: building zfs for $kver"
  zver=$(dpkg-query -W -f='${Version}' zfs-dkms | sed -E 's/^[0-9]+://; s/-[^-]*$//')
  dkms install "zfs/$zver" -k "$kver" >/dev/null
fi
modinfo -k "$kver" zfs >/dev/null

if [ ! -x "$venv/bin/vng" ]; then
  step "pip: virtme-ng into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'virtme-ng==1.42'
fi
step "done: kernel $kver, $("$venv/bin/vng" --version 2>&1 | head -n1)"
