#!/usr/bin/env bash
# Applies pushgate's kernel profile (sysctl.d/90-pushgate.conf) to the running
# kernel by writing /proc/sys, and with --install copies the profile, the
# limits, the systemd unit and the pushgate user's definition into /etc.
#
#   sudo kernel-tuning/apply.sh                 sysctls, live (lost at reboot)
#   sudo kernel-tuning/apply.sh --install       + /etc drop-ins, user, unit (kept)
#   kernel-tuning/apply.sh --dry-run            print every write, make none
#   kernel-tuning/apply.sh --only net           per-network-namespace keys only
#   kernel-tuning/apply.sh --install --root DIR files under DIR, nothing live
#
# Needs bash, coreutils and /proc; root except for --dry-run and --root.
set -euo pipefail
PROG=apply.sh
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<EOF
usage: $PROG [--dry-run] [--only net] [--install [--root DIR]] [--profile FILE]
                [--connections N] [--memory SIZE] [--config FILE] [--ports LIST]

  --dry-run       print each write ("would write KEY = VALUE (now CURRENT)") and
                  each file it would install; change nothing
  --only net      only the keys that are per network namespace (for use inside
                  one: ip netns exec NS $PROG --only net); global keys are skipped
  --install       also install into /etc: sysctl.d/90-pushgate.conf,
                  security/limits.d/90-pushgate.conf, systemd/system/pushgate.service,
                  sysusers.d/pushgate.conf, pushgate/pushgate.toml (only if absent);
                  create the pushgate user and its token secret if missing
  --root DIR      with --install: install under DIR (an image being built) and
                  change nothing live (no sysctls, user, secret or reload)
  --profile FILE  sysctl profile to apply [default: $PG_PROFILE]
  --connections N target connections on this host, which sizes the 'auto' keys
                  (tcp_mem, file-max, nr_open, orphans, TIME_WAIT, conntrack)
                  [default: what 66 % of the RAM holds at worst]
  --memory SIZE   size for this much RAM (16G, 128GiB, bytes) instead of
                  MemTotal, e.g. for an image built on another machine
  --config FILE   pushgate's config, for the listener ports to reserve and the
                  drain settings [default: /etc/pushgate/pushgate.toml, else
                  the one in this folder]
  --ports LIST    reserve these ports (comma-separated) instead of the config's

Keys whose value is 'auto' in the profile are derived from the RAM, the
connection target and pushgate's config; each is printed with its reason
("derived KEY = VALUE: why") before anything is written.
EOF
}

args=("$@")
dry_run=0 only_net=0 install=0 root="" profile=$PG_PROFILE
while [ $# -gt 0 ]; do
    case "$1" in
    --dry-run) dry_run=1 ;;
    --only)
        [ "${2:-}" = net ] || die "--only takes 'net' (the per-namespace keys); got '${2:-}'"
        only_net=1
        shift
        ;;
    --only=net) only_net=1 ;;
    --install) install=1 ;;
    --root)
        [ -n "${2:-}" ] || die "--root needs a directory"
        root=$2
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
[ -z "$root" ] || [ "$install" = 1 ] || die "--root only makes sense with --install"
[ -z "$root" ] || [ "$only_net" = 0 ] || die "--root changes nothing live; --only net has nothing to restrict"
[ -z "$root" ] || root=$(cd "$root" 2>/dev/null && pwd) || die "--root: $root is not a directory this user can enter"

load_profile "$profile"
derive_profile
print_sizing

live=1 # touches the running system (sysctls, user, secret, systemd)
[ -z "$root" ] || live=0
[ "$dry_run" = 0 ] || live=0

if [ "$live" = 1 ] && [ "$(id -u)" != 0 ]; then
    what="/proc/sys"
    [ "$install" = 0 ] || what="/proc/sys and /etc"
    echo "$PROG: must run as root: it writes $what (try: sudo $0 ${args[*]}; or add --dry-run to see what it would do)" >&2
    exit 1
fi

# Global keys written from inside a network namespace change the whole host.
# The kernel registers net.ipv4.tcp_mem for the host's (initial) namespace
# only, so its absence proves another one; this works where /proc/1/ns is
# unreadable (containers). PID 1's namespace, when readable, is a second test.
in_other_netns() {
    local self init
    [ -e /proc/sys/net/ipv4/tcp_mem ] || return 0
    self=$(readlink /proc/self/ns/net 2>/dev/null) || return 1
    init=$(readlink /proc/1/ns/net 2>/dev/null) || return 1
    [ "$self" != "$init" ]
}
if [ -z "$root" ] && [ "$only_net" = 0 ] && in_other_netns; then
    if [ "$dry_run" = 0 ]; then
        echo "$PROG: this is not the host's network namespace; global keys (fs.*, net.ipv4.tcp_mem, ...) would change the whole host. Use --only net here, or run on the host." >&2
        exit 1
    fi
    echo "note: not the host's network namespace; without --dry-run this refuses unless --only net"
fi

failed=0

# ---------------------------------------------------------------- install

install_file() { # SRC DEST MODE
    local src=$1 dest=$2 mode=$3 what shown=$1
    [ "$src" != "${rendered:-}" ] || shown="$profile (sized)"
    if [ ! -e "$dest" ]; then
        what="new"
    elif [ "$(cksum <"$src")" = "$(cksum <"$dest")" ]; then
        what="unchanged"
    else
        what="replaces a different file"
    fi
    if [ "$dry_run" = 1 ]; then
        echo "would install $shown -> $dest ($what)"
    else
        install -D -m "$mode" "$src" "$dest"
        echo "installed $shown -> $dest ($what)"
    fi
}

if [ "$install" = 1 ]; then
    # systemd-sysctl cannot derive 'auto': install the values this run sized.
    rendered=$(mktemp)
    trap 'rm -f "$rendered"' EXIT
    render_profile "$profile" >"$rendered"
    chmod 0644 "$rendered"
    install_file "$rendered" "$root/etc/sysctl.d/90-pushgate.conf" 0644
    install_file "$PG_LIMITS" "$root/etc/security/limits.d/90-pushgate.conf" 0644
    install_file "$PG_UNIT" "$root/etc/systemd/system/pushgate.service" 0644
    install_file "$PG_DIR/sysusers.d/pushgate.conf" "$root/etc/sysusers.d/pushgate.conf" 0644
    # The operator's configuration is never overwritten.
    if [ -e "$root/etc/pushgate/pushgate.toml" ]; then
        echo "keep $root/etc/pushgate/pushgate.toml (exists; not overwritten)"
    else
        install_file "$PG_DIR/pushgate.toml" "$root/etc/pushgate/pushgate.toml" 0644
    fi

    if [ -n "$root" ]; then
        # An image must not carry one host's secret; systemd-sysusers creates
        # the user at boot from sysusers.d.
        echo "note: --root: no user, secret or systemctl here; on the target run: systemd-sysusers; then $0 --install (creates /var/lib/pushgate/secret)"
    else
        if id -u pushgate >/dev/null 2>&1; then
            echo "user pushgate exists"
        elif [ "$dry_run" = 1 ]; then
            echo "would create system user pushgate"
        elif command -v systemd-sysusers >/dev/null; then
            systemd-sysusers /etc/sysusers.d/pushgate.conf
            echo "created system user pushgate (systemd-sysusers)"
        else
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin --comment "pushgate push-notification gateway" pushgate
            echo "created system user pushgate (useradd)"
        fi

        # The token secret outlives restarts (the run directory does not).
        secret=/var/lib/pushgate/secret
        if [ -e "$secret" ]; then
            echo "keep $secret (exists)"
        elif [ "$dry_run" = 1 ]; then
            echo "would generate $secret (32 random bytes as hex, mode 0600, owner pushgate)"
        else
            install -d -o pushgate -g pushgate -m 0700 /var/lib/pushgate
            (
                umask 077
                head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n' >"$secret.tmp"
            )
            chown pushgate:pushgate "$secret.tmp"
            mv "$secret.tmp" "$secret"
            echo "generated $secret (mode 0600, owner pushgate)"
        fi

        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
            if [ "$dry_run" = 1 ]; then
                echo "would run systemctl daemon-reload"
            else
                systemctl daemon-reload
                echo "ran systemctl daemon-reload (start with: systemctl enable --now pushgate)"
            fi
        fi
    fi
fi

# ---------------------------------------------------------------- sysctls

if [ -z "$root" ]; then
    for i in "${!KEYS[@]}"; do
        key=${KEYS[$i]} want=${VALUES[$i]}
        if [ "$only_net" = 1 ] && [ "${SCOPES[$i]}" != netns ]; then
            echo "skip $key (global: not per network namespace)"
            continue
        fi
        if ! have=$(read_key "$key"); then
            if [ "${OPTIONAL[$i]}" = 1 ]; then
                echo "skip $key (optional, absent here: module not loaded or older kernel)"
            else
                echo "FAILED $key: $(proc_path "$key") does not exist on this kernel" >&2
                failed=$((failed + 1))
            fi
            continue
        fi
        if [ "$dry_run" = 1 ]; then
            echo "would write $key = $want (now $(show "$have"))"
            continue
        fi
        if ! err=$({ printf '%s\n' "$want" >"$(proc_path "$key")"; } 2>&1); then
            echo "FAILED $key = $want (now $(show "$have")): ${err##*: }" >&2
            failed=$((failed + 1))
            continue
        fi
        # The kernel may clamp or reject a value silently: trust only a read-back.
        got=$(read_key "$key") || got="(unreadable)"
        if same_value "$got" "$want"; then
            echo "wrote $key = $want (was $(show "$have"))"
        else
            echo "FAILED $key: wrote $want, the kernel reads back $(show "$got")" >&2
            failed=$((failed + 1))
        fi
    done
    [ "$only_net" = 1 ] || tcp_mem_note
fi

if [ "$failed" -gt 0 ]; then
    echo "$PROG: $failed key(s) not set; see FAILED above" >&2
    exit 1
fi
if [ "$live" = 1 ] && [ "$install" = 0 ]; then
    echo "done: live until reboot; --install makes it permanent (/etc/sysctl.d)"
fi
