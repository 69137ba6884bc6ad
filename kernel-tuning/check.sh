#!/usr/bin/env bash
# Read-only: compares the running kernel with pushgate's profile
# (sysctl.d/90-pushgate.conf), checks that io_uring is allowed, and with
# --pid the open-file and locked-memory limits of a running pushgate.
#
#   kernel-tuning/check.sh
#   kernel-tuning/check.sh --pid "$(systemctl show -p MainPID --value pushgate)"
#   ip netns exec NS kernel-tuning/check.sh --only net
#
# Prints one line per check: "ok KEY = VALUE" or "DIFFERS KEY: have X, want Y".
# Exit 0 when everything matches, 1 when something differs, 2 on bad usage.
set -euo pipefail
PROG=check.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
usage: $PROG [--only net] [--pid PID] [--profile FILE]
                [--connections N] [--memory SIZE] [--config FILE] [--ports LIST]

  --only net      only the keys that are per network namespace
  --pid PID       also check that process's limits (from /proc/PID/limits)
                  against the unit's LimitNOFILE= and LimitMEMLOCK=
  --profile FILE  sysctl profile to compare with [default: $PG_PROFILE];
                  after apply.sh --install, /etc/sysctl.d/90-pushgate.conf
                  compares with exactly what was installed
  --connections N target connections on this host, which sizes the 'auto' keys
                  (tcp_mem, file-max, nr_open, orphans, TIME_WAIT, conntrack)
                  [default: what 66 % of the RAM holds at worst]
  --memory SIZE   size for this much RAM (16G, 128GiB, bytes) instead of
                  MemTotal, e.g. for an image built on another machine
  --config FILE   pushgate's config, for the listener ports to reserve and the
                  drain settings [default: /etc/pushgate/pushgate.toml, else
                  the one in this folder]
  --ports LIST    reserve these ports (comma-separated) instead of the config's

Give the same sizing options as to apply.sh: 'auto' keys are derived the
same way from them.
EOF
}

only_net=0 pid="" profile=$PG_PROFILE
while [ $# -gt 0 ]; do
    case "$1" in
    --only)
        [ "${2:-}" = net ] || die "--only takes 'net' (the per-namespace keys); got '${2:-}'"
        only_net=1
        shift
        ;;
    --only=net) only_net=1 ;;
    --pid)
        [[ "${2:-}" =~ ^[0-9]+$ ]] || die "--pid needs a process id; got '${2:-}'"
        pid=$2
        shift
        ;;
    --profile)
        [ -n "${2:-}" ] || die "--profile needs a file"
        profile=$2
        shift
        ;;
    --connections | --memory | --config | --ports)
        [ -n "${2:-}" ] || die "$1 needs a value"
        case "$1" in
        --connections) SZ_CONNECTIONS=$2 ;;
        --memory) SZ_MEMORY_ARG=$2 ;;
        --config) SZ_CONFIG=$2 ;;
        --ports) SZ_PORTS_ARG=$2 ;;
        esac
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        die "unknown argument '$1'"
        ;;
    esac
    shift
done

load_profile "$profile"
derive_profile
print_sizing
ok=0 differs=0
pass() {
    echo "ok      $*"
    ok=$((ok + 1))
}
fail() {
    echo "DIFFERS $*"
    differs=$((differs + 1))
}

# ---------------------------------------------------------------- sysctls

for i in "${!KEYS[@]}"; do
    key=${KEYS[$i]} want=${VALUES[$i]}
    if [ "$only_net" = 1 ] && [ "${SCOPES[$i]}" != netns ]; then
        echo "skip    $key (global: not per network namespace)"
        continue
    fi
    if ! have=$(read_key "$key"); then
        if [ "${OPTIONAL[$i]}" = 1 ]; then
            pass "$key: absent (optional: module not loaded), nothing to tune"
        else
            fail "$key: have (absent on this kernel), want $want"
        fi
        continue
    fi
    if same_value "$have" "$want"; then
        pass "$key = $(show "$have")"
    else
        fail "$key: have $(show "$have"), want $want"
    fi
done

# ---------------------------------------------------------------- io_uring

# Process $1's groups (primary and supplementary) contain gid $2.
pid_in_group() {
    local line gids
    while IFS= read -r line; do
        case "$line" in
        Gid:* | Groups:*)
            gids=" ${line#*:} "
            gids=${gids//$'\t'/ }
            [[ "$gids" == *" $2 "* ]] && return 0
            ;;
        esac
    done <"/proc/$1/status"
    return 1
}

if [ "$only_net" = 0 ]; then
    # 0 = allowed; 1 = only for CAP_SYS_ADMIN or kernel.io_uring_group;
    # 2 = disabled. Absent before Linux 6.6: allowed if built in.
    if ! disabled=$(read_key kernel.io_uring_disabled); then
        pass "kernel.io_uring_disabled: absent (kernel before 6.6: io_uring is allowed when built in)"
    elif [ "$disabled" = 0 ]; then
        pass "kernel.io_uring_disabled = 0 (io_uring allowed)"
    elif [ "$disabled" = 1 ]; then
        group=$(read_key kernel.io_uring_group 2>/dev/null) || group=-1
        if [ -n "$pid" ] && [ "$group" != -1 ] && [ -r "/proc/$pid/status" ] && pid_in_group "$pid" "$group"; then
            pass "kernel.io_uring_disabled = 1, and pid $pid is in kernel.io_uring_group $group"
        else
            fail "kernel.io_uring_disabled: have 1, want 0 (or 1 with the pushgate user in kernel.io_uring_group, now $group; check with --pid)"
        fi
    else
        fail "kernel.io_uring_disabled: have $disabled, want 0 (io_uring is off: pushgate cannot start)"
    fi
fi

# ---------------------------------------------------------------- limits

if [ -n "$pid" ]; then
    limits=/proc/$pid/limits
    [ -r "$limits" ] || die "cannot read $limits (no such process, or not yours)"
    unit_setting LimitNOFILE
    want_nofile=${REPLY%%:*} # "soft:hard" or one value for both
    unit_setting LimitMEMLOCK
    want_memlock=$REPLY
    nofile_soft="" nofile_hard="" memlock_soft="" memlock_hard=""
    while IFS= read -r line; do
        case "$line" in
        "Max open files "*)
            read -r nofile_soft nofile_hard _ <<<"${line#Max open files}"
            ;;
        "Max locked memory "*)
            read -r memlock_soft memlock_hard _ <<<"${line#Max locked memory}"
            ;;
        esac
    done <"$limits"

    # Open files: connections_per_shard_max is capped by this (each shard's
    # fixed-file table), so more than the unit's value is fine too.
    if [ "$nofile_soft" = unlimited ] || { [[ "$nofile_soft" =~ ^[0-9]+$ ]] && [ "$nofile_soft" -ge "$want_nofile" ]; }; then
        pass "ulimit -n (pid $pid) = $nofile_soft (soft; hard $nofile_hard)"
    else
        fail "ulimit -n (pid $pid): have $nofile_soft (soft; hard $nofile_hard), want $want_nofile"
    fi

    # Locked memory: io_uring rings are charged to it, unless the process
    # has CAP_IPC_LOCK (bit 14 of CapEff).
    capeff=0
    while IFS= read -r line; do
        case "$line" in CapEff:*) capeff=$(trim "${line#CapEff:}") ;; esac
    done <"/proc/$pid/status"
    if [ "$memlock_soft" = unlimited ]; then
        pass "ulimit -l (pid $pid) = unlimited"
    elif (((0x$capeff >> 14) & 1)); then
        pass "ulimit -l (pid $pid) = $memlock_soft bytes, not charged: the process has CAP_IPC_LOCK"
    else
        fail "ulimit -l (pid $pid): have $memlock_soft bytes (hard $memlock_hard), want ${want_memlock/infinity/unlimited} (or CAP_IPC_LOCK)"
    fi
fi

[ "$only_net" = 1 ] || tcp_mem_note

echo "check: $ok ok, $differs differ"
[ "$differs" = 0 ]
