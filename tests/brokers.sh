#!/usr/bin/env bash
# Installs (when missing), starts and stops the brokers the test suite runs against, each on
# loopback with a throwaway data directory.
#
#   tests/brokers.sh up [kafka] [rabbitmq] [redis] [postgres]   (no names: all of them)
#   tests/brokers.sh down
#
# Installs: Debian's rabbitmq-server, redis-server and postgresql (after apt-get update), and the
# Kafka-compatible broker Tansu with `cargo install` into $ANYBUS_CACHE (see KAFKA_BROKER.md).
# `up` is idempotent: a broker that already answers is left alone.
set -euo pipefail

CACHE="${ANYBUS_CACHE:-$HOME/.cache/anybus}"
RUN="${ANYBUS_BROKER_DIR:-/tmp/anybus-brokers}"
TANSU_VERSION=0.6.0
TANSU="$CACHE/tansu/bin/tansu"
KAFKA_PORT=9092
AMQP_PORT=5672
REDIS_PORT=6379
PG_PORT=5432
RABBIT_NODE=anybus@localhost

log() { printf 'brokers: %s\n' "$*" >&2; }

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits until something listens on the port; fails after $2 seconds with the log's tail.
wait_port() {
    local port=$1 seconds=$2 name=$3 logfile=$4 i
    for ((i = 0; i < seconds * 10; i++)); do
        answers "$port" && return 0
        sleep 0.1
    done
    log "$name did not answer on 127.0.0.1:$port within ${seconds}s; last lines of $logfile:"
    tail -n 30 "$logfile" >&2 || true
    return 1
}

apt_install() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

up_kafka() {
    if ! { [ -x "$TANSU" ] && "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; }; then
        log "installing tansu $TANSU_VERSION (about 10 minutes on 2 cores)"
        cargo install --locked --quiet tansu --version "$TANSU_VERSION" \
            --features dynostore,libsql --root "$CACHE/tansu"
    fi
    # Another Kafka client for the interop test (Debian's kcat is too old for Tansu).
    if ! "$CACHE/venv/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
        log "installing the Python Kafka client into $CACHE/venv"
        python3 -m venv "$CACHE/venv"
        "$CACHE/venv/bin/pip" install --quiet confluent-kafka==2.16.1
    fi
    answers $KAFKA_PORT && { log "kafka already answers on $KAFKA_PORT"; return 0; }
    local dir="$RUN/tansu"
    rm -rf "$dir" && mkdir -p "$dir"
    # Tansu reads a .env file from its working directory: give it an empty one of its own.
    (cd "$dir" && : >.env && exec setsid nohup "$TANSU" broker \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine memory://tansu/ </dev/null >"$dir/log" 2>&1 &
        echo $! >"$dir/pid")
    wait_port $KAFKA_PORT 30 tansu "$dir/log"
    log "kafka (tansu) on 127.0.0.1:$KAFKA_PORT"
}

rabbit_env() {
    export RABBITMQ_NODENAME=$RABBIT_NODE
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$AMQP_PORT
    export RABBITMQ_DIST_PORT=25672
    export RABBITMQ_MNESIA_BASE="$RUN/rabbitmq/mnesia"
    export RABBITMQ_LOG_BASE="$RUN/rabbitmq/log"
    export RABBITMQ_CONFIG_FILE="$RUN/rabbitmq/rabbitmq"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$RUN/rabbitmq/enabled_plugins"
    export RABBITMQ_PID_FILE="$RUN/rabbitmq/pid"
}

up_rabbitmq() {
    apt_install rabbitmq-server
    # Another AMQP client for the interop test: messages as a foreign producer writes them.
    if ! "$CACHE/venv/bin/python" -c 'import pika' 2>/dev/null; then
        log "installing the Python AMQP client into $CACHE/venv"
        python3 -m venv "$CACHE/venv"
        "$CACHE/venv/bin/pip" install --quiet pika==1.4.4
    fi
    answers $AMQP_PORT && { log "rabbitmq already answers on $AMQP_PORT"; return 0; }
    rm -rf "$RUN/rabbitmq" && mkdir -p "$RUN/rabbitmq/log" "$RUN/rabbitmq/mnesia"
    rabbit_env
    # guest may log in from loopback only, which is where the tests are.
    printf 'loopback_users.guest = true\nlisteners.tcp.default = 127.0.0.1:%s\n' $AMQP_PORT \
        >"$RUN/rabbitmq/rabbitmq.conf"
    echo '[].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
    # Run the server binary itself, not the wrapper that switches to the rabbitmq user, so that
    # the data directories and the Erlang cookie are this user's.
    /usr/lib/rabbitmq/bin/rabbitmq-server -detached >"$RUN/rabbitmq/start.log" 2>&1
    wait_port $AMQP_PORT 90 rabbitmq "$RUN/rabbitmq/log/$RABBIT_NODE.log"
    /usr/lib/rabbitmq/bin/rabbitmqctl -n $RABBIT_NODE -q await_startup >/dev/null
    log "rabbitmq on 127.0.0.1:$AMQP_PORT (guest/guest, vhost /)"
}

up_redis() {
    apt_install redis-server
    answers $REDIS_PORT && { log "redis already answers on $REDIS_PORT"; return 0; }
    rm -rf "$RUN/redis" && mkdir -p "$RUN/redis"
    redis-server --bind 127.0.0.1 --port $REDIS_PORT --dir "$RUN/redis" --save '' \
        --appendonly no --daemonize yes --pidfile "$RUN/redis/pid" \
        --logfile "$RUN/redis/log"
    wait_port $REDIS_PORT 30 redis "$RUN/redis/log"
    log "redis on 127.0.0.1:$REDIS_PORT"
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1; }

as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi
}

up_postgres() {
    apt_install postgresql
    answers $PG_PORT && { log "postgres already answers on $PG_PORT"; return 0; }
    local dir="$RUN/postgres" bin
    bin=$(pg_bin)
    rm -rf "$dir" && mkdir -p "$dir"
    echo anybus >"$dir/pwfile"
    [ "$(id -u)" -eq 0 ] && chown -R postgres "$dir"
    as_postgres "'$bin/initdb' -D '$dir/data' -U anybus --pwfile='$dir/pwfile' --auth=scram-sha-256 >'$dir/initdb.log' 2>&1"
    as_postgres "'$bin/pg_ctl' -D '$dir/data' -l '$dir/log' -w -t 60 -o \"-p $PG_PORT -c listen_addresses=127.0.0.1 -k '$dir'\" start >/dev/null"
    log "postgres on 127.0.0.1:$PG_PORT (user anybus, password anybus, database anybus)"
    PGPASSWORD=anybus "$bin/psql" -h 127.0.0.1 -p $PG_PORT -U anybus -d postgres -qc 'CREATE DATABASE anybus' >/dev/null
}

down() {
    if [ -f "$RUN/tansu/pid" ]; then
        kill -TERM "$(cat "$RUN/tansu/pid")" 2>/dev/null || true
        rm -f "$RUN/tansu/pid"
    fi
    # Also one whose pid file is gone (an earlier run that was cut short).
    pkill -TERM -f "$TANSU broker --listener-url tcp://127.0.0.1:$KAFKA_PORT" 2>/dev/null || true
    if [ -d "$RUN/rabbitmq" ]; then
        rabbit_env
        /usr/lib/rabbitmq/bin/rabbitmqctl -n $RABBIT_NODE -q stop >/dev/null 2>&1 || true
        rm -rf "$RUN/rabbitmq"
        # epmd outlives the node; stop it too so nothing of ours keeps running.
        pkill -x epmd 2>/dev/null || true
    fi
    if [ -f "$RUN/redis/pid" ]; then
        kill -TERM "$(cat "$RUN/redis/pid")" 2>/dev/null || true
        rm -rf "$RUN/redis"
    fi
    if [ -d "$RUN/postgres/data" ]; then
        as_postgres "'$(pg_bin)/pg_ctl' -D '$RUN/postgres/data' -m fast -w stop >/dev/null" || true
        rm -rf "$RUN/postgres"
    fi
}

case "${1:-}" in
up)
    shift
    [ $# -gt 0 ] || set -- kafka rabbitmq redis postgres
    mkdir -p "$RUN"
    for broker in "$@"; do
        case "$broker" in
        kafka | rabbitmq | redis | postgres) "up_$broker" ;;
        *) log "unknown broker '$broker' (kafka, rabbitmq, redis, postgres)"; exit 2 ;;
        esac
    done
    ;;
down) down ;;
*) echo "usage: $0 up [kafka] [rabbitmq] [redis] [postgres] | down" >&2; exit 2 ;;
esac
