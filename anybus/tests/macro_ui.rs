//! Compile-fail and compile-pass tests of `#[anybus::subscriber]`: what a user sees when an
//! argument or the handler's signature is wrong, and that every valid form expands.
//!
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test -p anybus --test macro_ui`,
//! then read every `.stderr`: it is the message a user gets.
//!
//! The messages list the extractors that exist, and the `postgres` feature adds one (`Inbox`),
//! so the expected output is that of a build without features: `tests/run.sh` runs this test
//! in such a build, and a build with `postgres` skips it.
#![cfg(not(feature = "postgres"))]

#[test]
fn macro_ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
