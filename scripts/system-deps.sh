#!/usr/bin/env bash
# Debian packages the test suite needs (the real servers it starts): installs only what is
# missing, so a second run costs nothing. Needs root (or sudo).
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)                    # UI screenshot test
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)                          # the ssh fleet the tests start
command -v ip >/dev/null 2>&1 || need+=(iproute2)                           # its hosts live in network namespaces
[[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/sbin/munged ]] || need+=(slurmctld slurmd slurm-client munge)  # the test Slurm cluster
command -v podman >/dev/null 2>&1 || need+=(podman)                         # containers on local and ssh hosts
command -v runc >/dev/null 2>&1 || need+=(runc)                             # crun refuses this kernel's hybrid cgroups
command -v newuidmap >/dev/null 2>&1 || need+=(uidmap)                      # rootless podman (the fleet's accounts)
[[ -x /bin/busybox ]] || need+=(busybox-static)                             # the test images' userland
[[ -x /usr/lib/postgresql/15/bin/initdb || -n "$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null)" ]] || need+=(postgresql)  # the embedded stack's database
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)       # a private registry (logins, pulls)
command -v htpasswd >/dev/null 2>&1 || need+=(apache2-utils)                # its password file
[[ -x /usr/bin/redis-server ]] || need+=(redis-server)                       # the Celery broker of the several-machines test
command -v rsync >/dev/null 2>&1 || need+=(rsync)                            # bench/code_ship.py's baseline
/usr/bin/python3 -c "import torch.distributed" 2>/dev/null || need+=(python3-torch)  # a real gloo all-reduce on two Slurm nodes (CPU build, ~180 MB)
configure_podman() {
    # what podman needs on these machines (TESTBED.md): runc, cgroupfs, no default ulimits. Written
    # only where no containers.conf exists, so a machine's own settings are left alone.
    [[ -e /etc/containers/containers.conf ]] && return 0
    $SUDO mkdir -p /etc/containers
    printf '%s\n' '# written by flexorch-provider scripts/system-deps.sh for the test suite' \
        '[containers]' 'default_ulimits = []' '[engine]' 'cgroup_manager = "cgroupfs"' 'runtime = "runc"' |
        $SUDO tee /etc/containers/containers.conf >/dev/null
}
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    SUDO=sudo
fi
if ((${#need[@]} == 0)); then
    configure_podman
    exit 0
fi
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
configure_podman
