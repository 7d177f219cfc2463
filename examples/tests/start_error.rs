//! What a person reads when the example cannot start: the error's message, not its `Debug`
//! form, and never the password.

use std::process::Command;

#[test]
fn a_start_error_prints_its_message_without_the_password() {
    let output = Command::new(env!("CARGO_BIN_EXE_flows"))
        .env("ANYBUS_URL", "nats://app:hunter2-secret@127.0.0.1:4222")
        .output()
        .expect("run the flows binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .contains("flows: unknown broker URL scheme `nats` in `nats://app:***@127.0.0.1:4222`"),
        "{stderr}"
    );
    // `Debug` would show the variant's name and fields.
    assert!(!stderr.contains("UnknownScheme"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
