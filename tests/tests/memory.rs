//! The conformance suite on the embedded memory backend.

anybus_conformance::conformance_suite!(anybus_conformance::Env::memory());
