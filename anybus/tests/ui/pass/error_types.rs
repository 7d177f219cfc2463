//! Handler error types that convert into a transient `HandlerError`: `anyhow::Error`, a boxed
//! `std::error::Error`, any `std::error::Error`, and a message.

use anybus::FailureKind;

#[anybus::subscriber(topic = "orders")]
async fn with_anyhow(n: u64) -> Result<(), anyhow::Error> {
    anyhow::ensure!(n > 0, "order {n} has no lines");
    Ok(())
}

#[anybus::subscriber(topic = "orders")]
async fn with_boxed(n: u64) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if n == 0 {
        return Err("order 0 has no lines".into());
    }
    Ok(())
}

#[anybus::subscriber(topic = "orders")]
async fn with_message(n: u64) -> Result<(), String> {
    if n == 0 {
        return Err(format!("order {n} has no lines"));
    }
    Ok(())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let anyhow = runtime.block_on(with_anyhow(0)).unwrap_err();
    let boxed = runtime.block_on(with_boxed(0)).unwrap_err();
    let message = runtime.block_on(with_message(0)).unwrap_err();
    for (error, type_name) in [
        (anybus::HandlerError::from(anyhow), "anyhow::Error"),
        (
            anybus::HandlerError::from(boxed),
            "alloc::boxed::Box<dyn core::error::Error + core::marker::Send + core::marker::Sync>",
        ),
        (
            anybus::HandlerError::from(message),
            "alloc::string::String",
        ),
    ] {
        assert_eq!(error.kind(), FailureKind::Transient);
        assert!(error.to_string().ends_with("has no lines"), "{error}");
        assert_eq!(error.type_name(), type_name);
    }
    assert!(runtime.block_on(with_anyhow(1)).is_ok());
    let _ = (
        with_anyhow::subscription(),
        with_boxed::subscription(),
        with_message::subscription(),
    );
}
