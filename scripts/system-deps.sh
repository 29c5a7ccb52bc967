#!/usr/bin/env bash
# Debian packages the test suite needs (the real servers it starts): installs only what is
# missing, so a second run costs nothing. Needs root (or sudo).
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)                    # UI screenshot test
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)                          # the ssh fleet the tests start
command -v ip >/dev/null 2>&1 || need+=(iproute2)                           # its hosts live in network namespaces
[[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/sbin/munged ]] || need+=(slurmctld slurmd slurm-client munge)  # the test Slurm cluster
if ((${#need[@]} == 0)); then
    exit 0
fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "missing Debian packages: ${need[*]}; install them as root" >&2; exit 1; }
    SUDO=sudo
fi
echo "==> apt-get install ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q "${need[@]}" >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null
    $SUDO apt-get install -y -q "${need[@]}" >/dev/null
}
