#!/bin/sh
# A stand-in for systemctl inside the package test's Debian root, where systemd is not running (a chroot
# in a lab namespace): installed there as /usr/bin/systemctl with /run/systemd/system present, so the
# package's maintainer scripts (through deb-systemd-invoke) and `quicether gateway init` make their real
# calls, and this runs the unit's ExecStart as systemd would: in the background, stopped by SIGTERM (then
# SIGKILL after TimeoutStopSec, 15 s), its output in /var/log/<unit>.log. Knows only what those callers
# use: is-enabled, is-active, enable, disable, start, stop, restart, try-restart, daemon-reload.
set -eu

state=/run/systemctl-standin
mkdir -p "$state"
action=""
units=""
for arg in "$@"; do
    case "$arg" in
        -*) ;;
        *) if [ -z "$action" ]; then action=$arg; else units="$units $arg"; fi ;;
    esac
done
echo "systemctl $*" >> "$state/calls"

unit_file() {
    for dir in /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system; do
        if [ -f "$dir/$1" ]; then echo "$dir/$1"; return 0; fi
    done
    return 1
}
wants_link() { echo "/etc/systemd/system/multi-user.target.wants/$1"; }
pid_of() { cat "$state/$1.pid" 2>/dev/null || true; }
running() {  # alive and not a zombie
    pid=$(pid_of "$1")
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] && ! sed 's/.*) //' "/proc/$pid/stat" | grep -q '^Z'
}
start() {
    running "$1" && return 0
    file=$(unit_file "$1") || { echo "Unit $1 not found." >&2; return 5; }
    command=$(sed -n 's/^ExecStart=//p' "$file" | tail -n 1)
    # A new session, no terminal, none of the caller's descriptors (apt and dpkg wait for their pipes).
    # shellcheck disable=SC2086 # ExecStart is split into words, as systemd does
    setsid $command < /dev/null >> "/var/log/$1.log" 2>&1 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
    echo $! > "$state/$1.pid"
}
stop() {
    pid=$(pid_of "$1")
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    waited=0
    while running "$1" && [ "$waited" -lt 150 ]; do sleep 0.1; waited=$((waited + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$state/$1.pid"
}

status=0
for unit in $units; do
    case "$action" in
        is-enabled)
            if [ -e "$(wants_link "$unit")" ]; then echo enabled; else echo disabled; status=1; fi ;;
        is-active)
            if running "$unit"; then echo active; else echo inactive; status=3; fi ;;
        enable)
            file=$(unit_file "$unit") || { echo "Unit $unit not found." >&2; exit 5; }
            mkdir -p "$(dirname "$(wants_link "$unit")")"
            ln -sf "$file" "$(wants_link "$unit")" ;;
        disable) rm -f "$(wants_link "$unit")" ;;
        start) start "$unit" || status=$? ;;
        stop) stop "$unit" ;;
        restart) stop "$unit"; start "$unit" || status=$? ;;
        try-restart) if running "$unit"; then stop "$unit"; start "$unit" || status=$?; fi ;;
        *) echo "systemctl-standin: $action is not supported" >&2; exit 1 ;;
    esac
done
[ "$action" = daemon-reload ] || [ -n "$units" ] || { echo "systemctl-standin: no unit given" >&2; exit 1; }
exit "$status"
