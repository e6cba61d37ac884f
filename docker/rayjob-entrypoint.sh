#!/bin/sh
# internvl-rayjob: the entrypoint of every RayJob in k8s/ (in the image: /usr/local/bin/internvl-rayjob).
#
#   internvl-rayjob [--days-ago N | --night YYYY-MM-DD] CONFIG [--set key=value ...]
#
# 1. `internvl-batch validate` first, on the head, while the GPU worker groups are still at
#    0 pods (they start at replicas: 0 and are scaled by demand): a config, manifest-prefix
#    or model problem fails the job within minutes with exit code 2 and no GPU ever starts.
# 2. Then `internvl-batch run`. A run that fails for a reason that may pass (exit 1: an
#    engine died, a node went away, the object store hiccuped) is run again here, on the
#    same cluster, where the workers and their node-cached weights still are; it resumes
#    from the committed parts. Exit 2 (a problem that will repeat) is never retried.
#    KubeRay would retry on a fresh cluster whatever the cause, so the RayJobs set
#    backoffLimit: 0 and leave the retrying to this script.
#
# --days-ago N / --night DATE: every "{night}" in the --set values becomes that UTC date
# (YYYY-MM-DD), computed once here, so validate and every run attempt read and write the
# same night's prefixes. --days-ago 1 = yesterday in UTC: the manifests of a day that is over.
#
# INTERNVL_RUN_ATTEMPTS (default 3) and INTERNVL_RETRY_PAUSE_S (default 60) tune step 2.
set -u

fail() {
    echo "internvl-rayjob: $*" >&2
    exit 2
}

night=
case "${1:-}" in
    --days-ago)
        days=${2:-}
        case $days in '' | *[!0-9]*) fail "--days-ago needs a whole number of days, got '$days'" ;; esac
        night=$(date -u -d "@$(($(date -u +%s) - days * 86400))" +%F) || fail "cannot compute the date"
        shift 2
        ;;
    --night)
        night=${2:-}
        [ "$(date -u -d "$night" +%F 2>/dev/null)" = "$night" ] || fail "--night needs a date YYYY-MM-DD, got '$night'"
        shift 2
        ;;
esac
[ $# -ge 1 ] || fail "usage: internvl-rayjob [--days-ago N | --night YYYY-MM-DD] CONFIG [--set key=value ...]"

# Substitute {night} in place, keeping every argument one word whatever it holds.
count=$#
uses_night=false
while [ "$count" -gt 0 ]; do
    arg=$1
    shift
    case $arg in
        *"{night}"*)
            uses_night=true
            [ -n "$night" ] || fail "'$arg' uses {night}: give --days-ago N or --night YYYY-MM-DD"
            arg=$(printf '%s\n' "$arg" | sed "s/{night}/$night/g")
            ;;
    esac
    set -- "$@" "$arg"
    count=$((count - 1))
done
if [ -n "$night" ]; then
    $uses_night || fail "--days-ago / --night given but no --set value uses {night}"
    echo "internvl-rayjob: night $night (UTC)"
fi

attempts=${INTERNVL_RUN_ATTEMPTS:-3}
pause=${INTERNVL_RETRY_PAUSE_S:-60}

# attempt STEP ARGS...: `internvl-batch STEP ARGS...` until it exits 0 or 2, at most $attempts times.
attempt() {
    i=1
    while :; do
        internvl-batch "$@"
        code=$?
        case $code in 0 | 2) return "$code" ;; esac
        [ "$i" -lt "$attempts" ] || return "$code"
        echo "internvl-rayjob: '$1' exited $code (attempt $i of $attempts); trying again in ${pause}s on this cluster" >&2
        sleep "$pause"
        i=$((i + 1))
    done
}

attempt validate "$@" || exit $?
attempt run "$@"
