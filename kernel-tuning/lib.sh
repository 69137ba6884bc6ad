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
    KEYS=() VALUES=() SCOPES=() OPTIONAL=() AUTO=()
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
# when a pinned (not `auto`) ceiling is more than half the memory (the
# kernel's own default is under a tenth), since the limit then no longer
# protects the host. Derived values never exceed half.
tcp_mem_note() {
    local i fields max
    for i in "${!KEYS[@]}"; do
        [ "${KEYS[$i]}" = net.ipv4.tcp_mem ] || continue
        read -r -a fields <<<"${VALUES[$i]}"
        max=${fields[2]:-0}
        if [ $((max * SZ_PAGE)) -gt $((SZ_MEMORY / 2)) ]; then
            echo "warning: tcp_mem max $max pages = $((max * SZ_PAGE >> 30)) GiB, more than half of the $((SZ_MEMORY >> 30)) GiB sized for;" \
                "write 'net.ipv4.tcp_mem = auto' in the profile to size it from RAM and --connections"
        fi
    done
}

# ---------------------------------------------------------------- sizing
#
# Keys whose value is `auto` in the profile are derived from the host and
# the deployment, the way Seastar's perftune derives its settings: the RAM
# (MemTotal, or --memory for an image built elsewhere), a target connection
# count (--connections, default: what the RAM holds), the listener ports
# (from pushgate's config file, or --ports) and the drain settings. Each
# derived value comes with a line saying why (DERIVED_WHY).

# Inputs, set by the scripts' flags before derive_profile runs.
SZ_CONNECTIONS="" SZ_MEMORY_ARG="" SZ_CONFIG="" SZ_PORTS_ARG=""
# Most connections --connections takes: 10x the 10 M the profile was
# designed around; more on one host is a typo.
SZ_CONNECTIONS_MAX=100000000
# Worst-case kernel bytes per connection beyond its pinned tcp_mem page:
# ~3.8 KB of socket slab + 256 B of armed io_uring receive
# (shared/KERNEL-FACTS.md), plus ~150 B of pushgate's own memory.
SZ_CONN_SLAB_BYTES=4100
SZ_CONN_USER_BYTES=150
# Share of RAM the default connection count may use at worst (slab + one
# pinned page each); the rest is for the kernel, pushgate's mailboxes and
# everything else on the host.
SZ_RAM_PERCENT=66
# The kernel's largest fs.nr_open on 64-bit (sysctl_nr_open_max).
SZ_NR_OPEN_MAX=2147483584
SZ_MI=1048576

# Parses a --memory value: bytes, or a number with K, M, G or T (binary,
# optionally followed by iB or B).
parse_memory() {
    local v=$1 n unit
    [[ "$v" =~ ^([0-9]+)([KMGT]?)(i?B)?$ ]] || die "--memory takes bytes or a size like 16G or 128GiB; got '$v'"
    n=${BASH_REMATCH[1]} unit=${BASH_REMATCH[2]}
    case "$unit" in
    K) n=$((n << 10)) ;;
    M) n=$((n << 20)) ;;
    G) n=$((n << 30)) ;;
    T) n=$((n << 40)) ;;
    esac
    [ "$n" -gt 0 ] || die "--memory must be more than 0"
    printf '%s' "$n"
}

# Rounds $1 up to a multiple of 1 Mi (values an operator recognises).
roundup_mi() {
    printf '%s' $((($1 + SZ_MI - 1) / SZ_MI * SZ_MI))
}

# Smallest power of two >= $1.
pow2ceil() {
    local p=1
    while [ "$p" -lt "$1" ]; do p=$((p * 2)); done
    printf '%s' "$p"
}

max() { if [ "$1" -ge "$2" ]; then printf '%s' "$1"; else printf '%s' "$2"; fi; }
min() { if [ "$1" -le "$2" ]; then printf '%s' "$1"; else printf '%s' "$2"; fi; }

# Human-readable bytes: GiB with one decimal, or MiB below 1 GiB.
human() {
    if [ "$1" -ge $((1 << 30)) ]; then
        printf '%d.%d GiB' $(($1 >> 30)) $(((($1 % (1 << 30)) * 10) >> 30))
    else
        printf '%d MiB' $(($1 >> 20))
    fi
}

# The value of a top-level `key = value` line of a pushgate TOML config
# (quotes removed), in $REPLY; fails when the key is absent. pushgate's
# config is flat, so a line parser is enough.
config_value() {
    local key=$1 file=$2 line v
    REPLY=""
    [ -r "$file" ] || return 1
    while IFS= read -r line || [ -n "$line" ]; do
        line=$(trim "$line")
        case "$line" in "$key"*=*) ;; *) continue ;; esac
        [ "$(trim "${line%%=*}")" = "$key" ] || continue
        v=$(trim "${line#*=}")
        v=${v%%#*}
        v=$(trim "$v")
        v=${v#\"}
        v=${v%\"}
        REPLY=$v
    done <"$file"
    [ -n "$REPLY" ]
}

# The port of "host:port" / "[v6]:port".
addr_port() {
    local port=${1##*:}
    [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -le 65535 ] || return 1
    printf '%s' "$((10#$port))"
}

# The RAM to size for (SZ_MEMORY, bytes) and the page size (SZ_PAGE).
resolve_memory() {
    local mem_kb k v _
    SZ_PAGE=$(getconf PAGESIZE 2>/dev/null || echo 4096)
    if [ -n "$SZ_MEMORY_ARG" ]; then
        SZ_MEMORY=$(parse_memory "$SZ_MEMORY_ARG")
        SZ_MEMORY_FROM="--memory"
    else
        mem_kb=""
        while read -r k v _; do
            if [ "$k" = MemTotal: ]; then mem_kb=$v; fi
        done </proc/meminfo
        [ -n "$mem_kb" ] || die "cannot read MemTotal from /proc/meminfo; pass --memory"
        SZ_MEMORY=$((mem_kb * 1024))
        SZ_MEMORY_FROM="MemTotal"
    fi
}

# Resolves every other sizing input into SZ_* and SZ_*_FROM (where it came
# from).
resolve_sizing() {
    local per_conn key addr port default ports=()
    per_conn=$((SZ_CONN_SLAB_BYTES + SZ_PAGE + SZ_CONN_USER_BYTES))
    SZ_RAM_CONNECTIONS=$((SZ_MEMORY * SZ_RAM_PERCENT / 100 / per_conn / 1000 * 1000))
    if [ -n "$SZ_CONNECTIONS" ]; then
        [[ "$SZ_CONNECTIONS" =~ ^[0-9]+$ ]] && [ "$SZ_CONNECTIONS" -ge 1 ] && [ "$SZ_CONNECTIONS" -le "$SZ_CONNECTIONS_MAX" ] ||
            die "--connections takes a whole number from 1 to $SZ_CONNECTIONS_MAX; got '$SZ_CONNECTIONS'"
        SZ_CONNECTIONS=$((10#$SZ_CONNECTIONS))
        SZ_CONNECTIONS_FROM="--connections"
    else
        SZ_CONNECTIONS=$(max "$SZ_RAM_CONNECTIONS" 1000)
        SZ_CONNECTIONS_FROM="what $SZ_RAM_PERCENT % of the RAM holds at $per_conn B each at worst; --connections to choose"
    fi
    SZ_WORST_BYTES=$((SZ_CONNECTIONS * per_conn))

    # pushgate's config: the file the unit starts it with.
    if [ -z "$SZ_CONFIG" ]; then
        SZ_CONFIG="${root:-}/etc/pushgate/pushgate.toml"
        [ -e "$SZ_CONFIG" ] || SZ_CONFIG="$PG_DIR/pushgate.toml"
    fi
    [ -r "$SZ_CONFIG" ] || die "cannot read pushgate config $SZ_CONFIG (--config)"

    if [ -n "$SZ_PORTS_ARG" ]; then
        IFS=, read -r -a ports <<<"$SZ_PORTS_ARG"
        for port in "${ports[@]}"; do
            [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] ||
                die "--ports takes comma-separated ports 1-65535; got '$SZ_PORTS_ARG'"
        done
        SZ_PORTS_FROM="--ports"
    else
        SZ_PORTS_FROM=""
        for key in listen admin_listen console_listen tls_listen; do
            case "$key" in listen) default=8080 ;; admin_listen) default=9090 ;; *) default="" ;; esac
            if config_value "$key" "$SZ_CONFIG"; then
                addr=$REPLY
                port=$(addr_port "$addr") || die "$SZ_CONFIG: $key = \"$addr\" has no port"
                SZ_PORTS_FROM+="${SZ_PORTS_FROM:+, }$key $addr"
            elif [ -n "$default" ]; then
                port=$default
                SZ_PORTS_FROM+="${SZ_PORTS_FROM:+, }$key default :$default"
            else
                continue
            fi
            # Port 0 is any free port: nothing to reserve.
            [ "$port" = 0 ] || ports+=("$port")
        done
        SZ_PORTS_FROM+=" in $SZ_CONFIG"
    fi
    [ "${#ports[@]}" -gt 0 ] || die "no fixed listener port to reserve (every listener in $SZ_CONFIG uses port 0); pass --ports"
    SZ_PORTS=$(printf '%s\n' "${ports[@]}" | sort -n -u | paste -sd, -)

    SZ_DRAIN_RATE=1000 SZ_DRAIN_DEADLINE_S=600
    if config_value drain_rate_per_s "$SZ_CONFIG" && [[ "$REPLY" =~ ^[0-9]+$ ]]; then SZ_DRAIN_RATE=$REPLY; fi
    if config_value drain_deadline_ms "$SZ_CONFIG" && [[ "$REPLY" =~ ^[0-9]+$ ]]; then
        SZ_DRAIN_DEADLINE_S=$(max $((REPLY / 1000)) 1)
    fi
}

# Sets DERIVED[key] and DERIVED_WHY[key] for every key the sizing knows.
derive_values() {
    local n=$SZ_CONNECTIONS mem_pages want floor cap value nofile rate tcp_max why
    declare -gA DERIVED=() DERIVED_WHY=()
    mem_pages=$((SZ_MEMORY / SZ_PAGE))

    unit_setting LimitNOFILE
    nofile=${REPLY%%:*}
    want=$(roundup_mi $((n * 8 / 5)))
    value=$(min "$(max "$want" "$nofile")" "$SZ_NR_OPEN_MAX")
    DERIVED[fs.nr_open]=$value
    DERIVED_WHY[fs.nr_open]="ceiling for one process's open files: a load generator holding $n sockets as ordinary fds + 60 %, rounded up to 1 Mi; at least pushgate.service's LimitNOFILE ($nofile), which needs no more (direct descriptors)"

    want=$(roundup_mi $((n * 2 * 6 / 5)))
    floor=$((SZ_MEMORY / 1024 / 10))
    value=$(max "$want" "$floor")
    why="every socket is a file: $n server + $n client sockets (a load generator on the same host) + 20 %, rounded up to 1 Mi"
    [ "$value" = "$want" ] || why+="; raised to the kernel's own default (RAM in KiB / 10 = $floor)"
    DERIVED[fs.file-max]=$value
    DERIVED_WHY[fs.file-max]=$why

    DERIVED[net.ipv4.ip_local_reserved_ports]=$SZ_PORTS
    DERIVED_WHY[net.ipv4.ip_local_reserved_ports]="pushgate's listener ports ($SZ_PORTS_FROM): no outbound socket may take them before pushgate binds after a restart"

    floor=$((mem_pages * 3 / 32))
    cap=$((mem_pages / 2))
    tcp_max=$n
    why="max = 1 page per connection (one small unacknowledged push each) = $n pages = $(human $((n * SZ_PAGE)))"
    if [ "$tcp_max" -lt "$floor" ]; then
        tcp_max=$floor
        why+=", raised to the kernel's own default (3/32 of RAM = $floor pages) so other traffic keeps it"
    elif [ "$tcp_max" -gt "$cap" ]; then
        tcp_max=$cap
        why+=", capped at half of the $(human "$SZ_MEMORY") of RAM ($cap pages) so TCP cannot take the host"
    fi
    DERIVED[net.ipv4.tcp_mem]="$((tcp_max / 2)) $((tcp_max * 3 / 4)) $tcp_max"
    DERIVED_WHY[net.ipv4.tcp_mem]="$why; pressure = 3/4 max, min = 1/2 max (pages of $SZ_PAGE B)"

    # A drain closes all N within the deadline, or at drain_rate_per_s if
    # that is faster; the kernel's defaults (about one per 256 KiB of RAM)
    # are the floor.
    rate=$(max "$SZ_DRAIN_RATE" $(((n + SZ_DRAIN_DEADLINE_S - 1) / SZ_DRAIN_DEADLINE_S)))
    floor=$(($(pow2ceil $((SZ_MEMORY / 131072))) / 2))
    want=$((rate * 15 * 2))
    value=$(max "$want" "$floor")
    why="a drain at $rate/s ($n connections in ${SZ_DRAIN_DEADLINE_S} s, or drain_rate_per_s if faster) whose peers were all dead: $rate/s x 15 s (tcp_fin_timeout) x 2 = $want"
    [ "$value" = "$want" ] || why+="; raised to the kernel's own default for this RAM ($floor)"
    DERIVED[net.ipv4.tcp_max_orphans]=$value
    DERIVED_WHY[net.ipv4.tcp_max_orphans]=$why

    want=$((rate * 60 * 2))
    value=$(max "$want" "$floor")
    why="pushgate closes first, so each drained connection spends 60 s in TIME_WAIT: $rate/s x 60 s x 2 = $want"
    [ "$value" = "$want" ] || why+="; raised to the kernel's own default for this RAM ($floor)"
    DERIVED[net.ipv4.tcp_max_tw_buckets]=$value
    DERIVED_WHY[net.ipv4.tcp_max_tw_buckets]=$why

    want=$(roundup_mi $((n * 6 / 5)))
    value=$(max "$want" 262144)
    DERIVED[net.netfilter.nf_conntrack_max]=$value
    DERIVED_WHY[net.netfilter.nf_conntrack_max]="one tracked flow per connection: $n + 20 %, rounded up to 1 Mi; at least the kernel's usual 262144"
    DERIVED[net.netfilter.nf_conntrack_buckets]=$((value / 4))
    DERIVED_WHY[net.netfilter.nf_conntrack_buckets]="one hash bucket per 4 tracked flows ($value / 4), so lookups stay short"
}

# Replaces every `auto` value in VALUES with its derived value. Needs
# load_profile first.
derive_profile() {
    local i key
    SZ_DERIVING=0
    resolve_memory
    for i in "${!KEYS[@]}"; do
        [ "${VALUES[$i]}" != auto ] || SZ_DERIVING=1
    done
    # A profile with every value pinned (one apply.sh --install rendered)
    # needs no sizing.
    [ "$SZ_DERIVING" = 1 ] || return 0
    resolve_sizing
    derive_values
    for i in "${!KEYS[@]}"; do
        key=${KEYS[$i]}
        [ "${VALUES[$i]}" = auto ] || continue
        [ -n "${DERIVED[$key]:-}" ] || die "$key = auto, but there is no rule to derive it; give it a value"
        VALUES[i]=${DERIVED[$key]}
        AUTO[i]=1
    done
}

# The sizing and every derived value with its reason, one line each.
print_sizing() {
    local i
    [ "$SZ_DERIVING" = 1 ] || return 0
    echo "sizing: $SZ_CONNECTIONS connections ($SZ_CONNECTIONS_FROM); $(human "$SZ_MEMORY") of RAM ($SZ_MEMORY_FROM); pages of $SZ_PAGE B; ports $SZ_PORTS"
    if [ "$SZ_CONNECTIONS_FROM" = --connections ] && [ "$SZ_CONNECTIONS" -gt "$SZ_RAM_CONNECTIONS" ]; then
        echo "warning: $SZ_CONNECTIONS connections may need $(human "$SZ_WORST_BYTES") of kernel memory (socket slab + one pinned page each), more than $SZ_RAM_PERCENT % of the $(human "$SZ_MEMORY") of RAM; this host holds about $SZ_RAM_CONNECTIONS"
    fi
    for i in "${!KEYS[@]}"; do
        [ "${AUTO[$i]:-0}" = 1 ] || continue
        echo "derived ${KEYS[$i]} = ${VALUES[$i]}: ${DERIVED_WHY[${KEYS[$i]}]}"
    done
}

# Writes the profile with every `auto` replaced by its value (what --install
# puts in /etc/sysctl.d, where systemd-sysctl cannot derive anything) to
# stdout, with a header saying what it was sized for.
render_profile() {
    local file=$1 line trimmed key bare i
    echo "# Sized by kernel-tuning/apply.sh for $SZ_CONNECTIONS connections, $(human "$SZ_MEMORY") of RAM, listener ports $SZ_PORTS."
    echo "# Values written 'auto' in kernel-tuning/sysctl.d/90-pushgate.conf were derived: the '# derived:' line above each says why."
    echo "# check.sh --profile /etc/sysctl.d/90-pushgate.conf compares the kernel with exactly this file."
    echo
    while IFS= read -r line || [ -n "$line" ]; do
        trimmed=$(trim "$line")
        case "$trimmed" in
        "" | "#"* | ";"*)
            printf '%s\n' "$line"
            continue
            ;;
        esac
        key=$(trim "${trimmed%%=*}")
        bare=${key#-}
        if [ "$(squeeze "${trimmed#*=}")" = auto ]; then
            for i in "${!KEYS[@]}"; do
                [ "${KEYS[$i]}" = "$bare" ] || continue
                printf '# derived: %s\n%s = %s\n' "${DERIVED_WHY[$bare]}" "$key" "${VALUES[$i]}"
            done
        else
            printf '%s\n' "$line"
        fi
    done <"$file"
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
