#!/usr/bin/env bash
# The whole test suite, as README.md gives it: starts the brokers the suite needs, runs every
# test, and stops the brokers again (also when a test fails).
#
# Today every backend in the build is the embedded memory backend, so no broker is started;
# the Kafka and RabbitMQ suites add theirs here through tests/brokers.sh when they land.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/anybus/target}"

cargo test --workspace --all-features
