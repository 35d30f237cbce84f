#!/usr/bin/env bash
# Install the Debian packages the project needs on the host (the qemu backend, the Linux golden
# image build, the VM tests and the web pages' browser tests). Idempotent and quick when everything is there: it asks dpkg
# first, and runs `apt-get update` (once) and `apt-get install` only for what is missing.
set -euo pipefail

PACKAGES=(
    qemu-system-x86   # qemu-system-x86_64: the qemu backend's machines
    qemu-utils        # qemu-img: golden images and per-job overlays
    debootstrap       # images/linux: the Debian root file system
    e2fsprogs         # mkfs.ext4 -d: fills the image's file system without mounting it
    socat             # the guest's only way out: relays its connections to the gRPC port
    xxd               # tests/security: a step prints a secret with `xxd -p`
    chromium          # tests/web: the pages in a real headless browser
    chromium-driver   # chromedriver: selenium drives that browser
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "system-packages: all present (${PACKAGES[*]})"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "system-packages: missing ${missing[*]}; run this script as root (apt-get install)" >&2
    exit 1
fi
echo "system-packages: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system-packages: installed ${missing[*]}"
