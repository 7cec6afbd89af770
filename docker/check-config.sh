#!/bin/sh
# Refuses to start the amba stack with unusable secrets. Run by the `config-check` service
# of docker-compose.yml before `db` and `postgrest` start (they wait for it to succeed);
# POSIX sh, so it runs in busybox.
#
# Refused: a value left at its placeholder (the value in docker/.env.example, or anything
# starting with "change-me"), a PGRST_JWT_SECRET shorter than 32 characters (PostgREST needs
# at least 32 for HS256), passwords shorter than 12 characters, and an
# AUTHENTICATOR_PASSWORD that is not URL-safe (it goes into PGRST_DB_URI).
#
# Try it without Docker:
#   env POSTGRES_PASSWORD=... AUTHENTICATOR_PASSWORD=... PGRST_JWT_SECRET=... \
#       EXAMPLE=docker/.env.example sh docker/check-config.sh
set -u

example=${EXAMPLE:-/amba/env.example}
failed=0

refuse() {
    printf 'amba config-check: %s\n' "$*" >&2
    failed=1
}

example_value() {
    [ -f "$example" ] || return 0
    sed -n "s/^$1=//p" "$example" | head -n 1
}

check() { # check NAME MIN_LENGTH
    name=$1
    min=$2
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        refuse "$name is not set: set it in docker/.env."
        return
    fi
    placeholder=$(example_value "$name")
    case "$value" in
    change-me* | CHANGE-ME* | changeme* | CHANGEME*)
        placeholder=$value
        ;;
    esac
    if [ "$value" = "$placeholder" ]; then
        refuse "$name still has the placeholder value of docker/.env.example. Set a real" \
            "secret in docker/.env, e.g. the output of: openssl rand -base64 48 | tr -d '/+=\\n'"
        return
    fi
    if [ "${#value}" -lt "$min" ]; then
        refuse "$name is ${#value} characters long; it must be at least $min."
    fi
}

check POSTGRES_PASSWORD 12
check AUTHENTICATOR_PASSWORD 12
check PGRST_JWT_SECRET 32

case "${AUTHENTICATOR_PASSWORD:-}" in
*[!A-Za-z0-9._~-]*)
    refuse "AUTHENTICATOR_PASSWORD must be URL-safe (letters, digits, - _ . ~): it is part" \
        "of PGRST_DB_URI."
    ;;
esac

if [ "$failed" -ne 0 ]; then
    echo "amba config-check: refusing to start; fix docker/.env and run docker compose up again." >&2
    exit 1
fi
echo "amba config-check: secrets set."
