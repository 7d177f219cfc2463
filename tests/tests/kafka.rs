//! The conformance suite on Kafka (the broker `tests/brokers.sh up kafka` starts).
#![cfg(feature = "kafka")]

anybus_conformance::conformance_suite!(anybus_conformance::Env::kafka());
