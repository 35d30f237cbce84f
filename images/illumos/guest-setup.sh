#!/bin/sh
# Runs INSIDE the builder VM (OmniOS, as root), copied there by build-golden.sh with:
#   /var/tmp/solstice-build/wheels/    the runner's wheel and its dependencies (built on the host)
#   /var/tmp/solstice-build/files/     solstice-bootstrap, solstice-bootstrap.xml, solstice-runner.xml
# It installs what a job guest needs, cleans what must not be in a golden image, and powers
# the VM off (the zone then halts, which tells build-golden.sh it is done).
set -eu

BUILD=/var/tmp/solstice-build
PYTHON_PKG=${PYTHON_PKG:-runtime/python-312}
PYTHON=${PYTHON:-/usr/bin/python3.12}
NIC=${NIC:-vioif0}

say() { echo "guest-setup: $*"; }

say "installing packages"
# git: the runner checks the job's commit out; the rest: what jobs usually expect to find.
pkg install --accept -q "$PYTHON_PKG" developer/versioning/git developer/build/gnu-make \
    system/header || [ $? -eq 4 ]   # 4: nothing to do

say "creating /opt/solstice with the runner"
"$PYTHON" -m venv /opt/solstice
/opt/solstice/bin/pip install -q --no-index --find-links "$BUILD/wheels" solstice-ci pyyaml
/opt/solstice/bin/solstice-runner --help >/dev/null

say "installing the boot-time seed reader and the runner service"
mkdir -p /opt/solstice/libexec /etc/solstice
install -m 0755 "$BUILD/files/solstice-bootstrap" /opt/solstice/libexec/solstice-bootstrap
cp "$BUILD/files/solstice-bootstrap.xml" "$BUILD/files/solstice-runner.xml" /lib/svc/manifest/site/
svccfg import /lib/svc/manifest/site/solstice-runner.xml
svccfg import /lib/svc/manifest/site/solstice-bootstrap.xml
# Enabled by each job's seed (runcmd), never by the image itself.
svcadm disable application/solstice/runner

say "cleaning what must not be in a golden image"
rm -f /etc/solstice/runner.toml /root/.ssh/authorized_keys /root/.bash_history
rm -rf "$BUILD"

say "jobs get their address by DHCP on $NIC; powering off"
# Last, in the background: this replaces the builder's static address we are connected over.
nohup sh -c "sleep 2; ipadm delete-if $NIC; ipadm create-if $NIC; \
    ipadm create-addr -T dhcp -w 1 $NIC/dhcp || true; poweroff" >/dev/null 2>&1 &
