#!/bin/bash
# Build a Solstice golden zvol for the bhyve backend, on an OmniOS host (global zone, root).
# See README.md in this directory for prerequisites and what each step does.
#
#   build-golden.sh -i omnios-r151054.cloud.raw.zst -d rpool/solstice/images/omnios-r151054 \
#       -w /var/tmp/solstice-wheels -l solstice0 -a 10.77.0.250/24 -g 10.77.0.1
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SIZE=8G
BUILDER=solstice-builder
ZONE_ROOT=/zones
SNAPSHOT=golden
IMAGE= DATASET= WHEELS= LINK= ADDRESS= GATEWAY=

usage() {
    sed -n '2,7p' "$0" >&2
    echo "options: -i IMAGE -d DATASET -w WHEEL_DIR -l LINK -a ADDR/PREFIX -g GATEWAY" \
         "[-s SIZE ($SIZE)] [-n BUILDER_ZONE ($BUILDER)] [-z ZONE_ROOT ($ZONE_ROOT)]" \
         "[-S SNAPSHOT ($SNAPSHOT)]" >&2
    exit 2
}

while getopts i:d:w:l:a:g:s:n:z:S: opt; do
    case $opt in
        i) IMAGE=$OPTARG ;; d) DATASET=$OPTARG ;; w) WHEELS=$OPTARG ;; l) LINK=$OPTARG ;;
        a) ADDRESS=$OPTARG ;; g) GATEWAY=$OPTARG ;; s) SIZE=$OPTARG ;; n) BUILDER=$OPTARG ;;
        z) ZONE_ROOT=$OPTARG ;; S) SNAPSHOT=$OPTARG ;; *) usage ;;
    esac
done
[ -n "$IMAGE" ] && [ -n "$DATASET" ] && [ -n "$WHEELS" ] && [ -n "$LINK" ] &&
    [ -n "$ADDRESS" ] && [ -n "$GATEWAY" ] || usage

say() { echo "build-golden: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root"
[ "$(zonename)" = global ] || die "run in the global zone"
pkg list -q brand/bhyve || die "the bhyve brand is not installed (pkg install brand/bhyve)"
zfs list -H "$DATASET" >/dev/null 2>&1 && die "$DATASET exists already; destroy it or pick another"
ls "$WHEELS"/solstice_ci-*.whl >/dev/null 2>&1 ||
    die "no solstice_ci wheel in $WHEELS (see README: pip wheel)"

VNIC=${BUILDER//[^A-Za-z0-9_]/_}0
WORK=$(mktemp -d /var/tmp/solstice-golden.XXXXXX)
DONE=
cleanup() {
    state=$(zoneadm -z "$BUILDER" list -p 2>/dev/null | cut -d: -f3 || true)
    case $state in running|ready) zoneadm -z "$BUILDER" halt ;; esac
    case $state in running|ready|installed|incomplete) zoneadm -z "$BUILDER" uninstall -F ;; esac
    [ -n "$state" ] && zonecfg -z "$BUILDER" delete -F
    dladm show-vnic "$VNIC" >/dev/null 2>&1 && dladm delete-vnic "$VNIC"
    # A half-built image must not be mistaken for a golden one.
    [ -n "$DONE" ] || ! zfs list -H "$DATASET" >/dev/null 2>&1 || zfs destroy "$DATASET"
    rm -rf "$WORK"
}
trap cleanup EXIT

say "writing $IMAGE to the new zvol $DATASET ($SIZE)"
zfs create -p -V "$SIZE" "$DATASET"
case $IMAGE in
    *.zst) zstd -dc "$IMAGE" ;;
    *.gz) gzip -dc "$IMAGE" ;;
    *) cat "$IMAGE" ;;
esac | dd of="/dev/zvol/rdsk/$DATASET" bs=1024k

say "booting the builder zone $BUILDER at $ADDRESS"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key"
dladm create-vnic -l "$LINK" "$VNIC"
cat > "$WORK/zonecfg" <<EOF
create -b
set brand=bhyve
set zonepath=$ZONE_ROOT/$BUILDER
set ip-type=exclusive
set autoboot=false
add net
set physical=$VNIC
set allowed-address=$ADDRESS
set defrouter=$GATEWAY
end
add device
set match=/dev/zvol/rdsk/$DATASET
end
add attr
set name=bootdisk
set type=string
set value=$DATASET
end
add attr
set name=ram
set type=string
set value=4G
end
add attr
set name=vcpus
set type=string
set value=2
end
add attr
set name=cloud-init
set type=string
set value=on
end
add attr
set name=sshkey
set type=string
set value="$(cat "$WORK/key.pub")"
end
commit
EOF
zonecfg -z "$BUILDER" -f "$WORK/zonecfg"
zoneadm -z "$BUILDER" install
zoneadm -z "$BUILDER" boot

HOST=${ADDRESS%/*}
SSH=(ssh -i "$WORK/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
     -o ConnectTimeout=5 -o BatchMode=yes "root@$HOST")
say "waiting for SSH on $HOST"
for _ in $(seq 120); do "${SSH[@]}" true 2>/dev/null && break; sleep 5; done
"${SSH[@]}" true || die "the builder never answered on SSH; see $ZONE_ROOT/$BUILDER/root/tmp/init.log"

say "installing the runner in the guest"
mkdir -p "$WORK/payload/wheels" "$WORK/payload/files"
cp "$WHEELS"/*.whl "$WORK/payload/wheels/"
cp "$HERE/files/solstice-bootstrap" "$HERE/files/solstice-bootstrap.xml" \
   "$REPO/deploy/smf/solstice-runner.xml" "$WORK/payload/files/"
cp "$HERE/guest-setup.sh" "$WORK/payload/"
tar -C "$WORK/payload" -cf - . | "${SSH[@]}" 'mkdir -p /var/tmp/solstice-build && tar -C /var/tmp/solstice-build -xf -'
"${SSH[@]}" 'sh /var/tmp/solstice-build/guest-setup.sh'

say "waiting for the guest to power off"
for _ in $(seq 120); do
    [ "$(zoneadm -z "$BUILDER" list -p | cut -d: -f3)" = installed ] && break
    sleep 5
done
[ "$(zoneadm -z "$BUILDER" list -p | cut -d: -f3)" = installed ] || die "the guest did not power off"

DONE=1
cleanup
trap - EXIT
zfs list -H "$DATASET" >/dev/null || die "$DATASET disappeared with the builder zone"
zfs snapshot "$DATASET@$SNAPSHOT"
say "done: $DATASET@$SNAPSHOT"
cat <<EOF
[orchestrator.bhyve.labels.omnios]
dataset = "$DATASET"
snapshot = "$SNAPSHOT"
EOF
