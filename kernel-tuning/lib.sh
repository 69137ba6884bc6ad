# shellcheck shell=bash
# Shared by apply.sh and check.sh (sourced, not run): reads the sysctl
# profile and /proc/sys. Plain bash and coreutils.

# The files this folder ships, next to the scripts.
PG_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PG_PROFILE="$PG_DIR/sysctl.d/90-pushgate.conf"
# shellcheck disable=SC2034 # used by apply.sh
PG_LIMITS="$PG_DIR/limits.d/90-pushgate.conf"
PG_UNIT="$PG_DIR/systemd/pushgate.service"

die() {
    echo "$PROG: $*" >&2
    exit 2
}

trim() {
    local s=$1
    s="${s#"${s%%[![:space:]]*}"}"
    s="${s%"${s##*[![:space:]]}"}"
    printf '%s' "$s"
}

# Whitespace runs (the kernel prints tuples with tabs) become one space.
squeeze() {
    local -a fields
    read -r -a fields <<<"$1" || true
    printf '%s' "${fields[*]}"
}

# Fills KEYS, VALUES, SCOPES (netns|global) and OPTIONAL (1|0) from a sysctl.d
# file whose keys each carry [netns] or [global] in the comment block above.
load_profile() {
    local file=$1 line n=0 scope="" key value optional
    KEYS=() VALUES=() SCOPES=() OPTIONAL=()
    [ -r "$file" ] || die "cannot read profile $file"
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line=$(trim "$line")
        case "$line" in
        "")
            scope=""
            continue
            ;;
        "#"* | ";"*)
            if [ -z "$scope" ]; then
                case "$line" in
                *"[netns]"*) scope=netns ;;
                *"[global]"*) scope=global ;;
                esac
            fi
            continue
            ;;
        esac
        case "$line" in
        *=*) ;;
        *) die "$file:$n: not 'key = value': $line" ;;
        esac
        key=$(trim "${line%%=*}")
        value=$(squeeze "${line#*=}")
        optional=0
        if [ "${key#-}" != "$key" ]; then
            optional=1
            key=${key#-}
        fi
        [[ "$key" =~ ^[a-z0-9_]+(\.[a-z0-9_-]+)+$ ]] || die "$file:$n: bad key '$key'"
        [ -n "$value" ] || die "$file:$n: $key has no value"
        [ -n "$scope" ] || die "$file:$n: $key: say [netns] or [global] in the comment above it"
        if [ "$scope" = netns ] && [ "${key#net.}" = "$key" ]; then
            die "$file:$n: $key is marked [netns] but only net.* keys are per network namespace"
        fi
        KEYS+=("$key")
        VALUES+=("$value")
        SCOPES+=("$scope")
        OPTIONAL+=("$optional")
        scope=""
    done <"$file"
    [ "${#KEYS[@]}" -gt 0 ] || die "no keys in $file"
}

# A value for messages: an empty one (ip_local_reserved_ports) made visible.
show() {
    if [ -n "$1" ]; then printf '%s' "$1"; else printf '(empty)'; fi
}

proc_path() {
    printf '/proc/sys/%s' "${1//.//}"
}

# Prints the current value (whitespace squeezed); fails if the key is absent
# or unreadable.
read_key() {
    local path v
    path=$(proc_path "$1")
    [ -r "$path" ] || return 1
    v=$(cat "$path" 2>/dev/null) || return 1
    squeeze "$v"
}

# Numbers compare by value, not spelling (leading zeros, any length);
# anything else (port lists like 8080,9090) as text.
norm_field() {
    local f=$1
    if [[ "$f" =~ ^[0-9]+$ ]]; then
        f="${f#"${f%%[!0]*}"}"
        [ -n "$f" ] || f=0
    fi
    printf '%s' "$f"
}

# True when $1 and $2 hold the same values field by field (tuples such as
# tcp_mem or ip_local_port_range compare each field).
same_value() {
    local -a a b
    local i
    read -r -a a <<<"$1" || true
    read -r -a b <<<"$2" || true
    [ "${#a[@]}" -eq "${#b[@]}" ] || return 1
    for i in "${!b[@]}"; do
        [ "$(norm_field "${a[$i]}")" = "$(norm_field "${b[$i]}")" ] || return 1
    done
}

# The profile's tcp_mem max in bytes against this host's RAM: prints a warning
# when the ceiling is more than half the memory (the kernel's own default is
# under a tenth), since the limit then no longer protects the host.
tcp_mem_note() {
    local i max page mem_kb fields k v
    for i in "${!KEYS[@]}"; do
        [ "${KEYS[$i]}" = net.ipv4.tcp_mem ] || continue
        read -r -a fields <<<"${VALUES[$i]}"
        max=${fields[2]:-0}
        page=$(getconf PAGESIZE 2>/dev/null || echo 4096)
        mem_kb=""
        while read -r k v _; do
            if [ "$k" = MemTotal: ]; then mem_kb=$v; fi
        done </proc/meminfo
        [ -n "$mem_kb" ] || return 0
        if [ "$page" != 4096 ]; then
            echo "warning: pages are $page bytes here, not 4096: tcp_mem's numbers mean $((page / 4096)) times more memory; divide them"
        fi
        if [ $((max * page / 1024)) -gt $((mem_kb / 2)) ]; then
            echo "warning: tcp_mem max $max pages = $((max * page >> 30)) GiB, more than half of this host's $((mem_kb >> 20)) GiB;" \
                "the profile is sized for 10 M connections on >= 128 GiB. Scale it in $PG_PROFILE: max = connections, pressure = 3/4 max, min = 1/2 max (pages)"
        fi
    done
}

# Leaves the unit's value of a Limit*= setting in $REPLY.
unit_setting() {
    local line
    REPLY=""
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in
        "$1="*) REPLY=$(trim "${line#*=}") ;;
        esac
    done <"$PG_UNIT"
    [ -n "$REPLY" ] || die "$PG_UNIT has no $1="
}
