//! Backend-agnostic conformance test bodies.
