//! Compile-fail and compile-pass tests of `#[anybus::subscriber]`: what a user sees when an
//! argument or the handler's signature is wrong, and that every valid form expands.
//!
//! Regenerate the expected output with `TRYBUILD=overwrite cargo test -p anybus --test macro_ui`,
//! then read every `.stderr`: it is the message a user gets.

#[test]
fn macro_ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
