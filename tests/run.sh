#!/usr/bin/env bash
# The whole test suite, as README.md gives it: starts the brokers the suite needs (installing
# them on a fresh machine), runs every test of every backend, and stops the brokers again, also
# when a test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/anybus/target}"

trap 'tests/brokers.sh down' EXIT
tests/brokers.sh up kafka rabbitmq redis postgres

# Every test with every backend compiled in, against the brokers started above.
cargo test --workspace --all-features
# What a build without the broker features says when asked for a broker, and the macro's
# compile errors as a user without features sees them (a small build: the runtime crate alone).
cargo test -p anybus --test start --test macro_ui
