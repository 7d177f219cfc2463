//! Names the expansion must not trip over: a handler called like the macro's helpers, a
//! handler defined inside a function, and user types that shadow prelude names.

use anybus::HandlerError;

#[allow(dead_code)]
struct Result;
#[allow(dead_code)]
struct Send;
#[allow(dead_code)]
struct Fn;

#[anybus::subscriber(topic = "a")]
async fn subscriber(n: u64) -> std::result::Result<(), HandlerError> {
    let _ = n;
    Ok(())
}

#[anybus::subscriber(topic = "b")]
async fn handler(n: u64) -> std::result::Result<(), HandlerError> {
    let _ = n;
    Ok(())
}

#[anybus::subscriber(topic = "c")]
async fn builder(n: u64) -> std::result::Result<(), HandlerError> {
    let _ = n;
    Ok(())
}

#[anybus::subscriber(topic = "d")]
pub(crate) async fn visible(n: u64) -> std::result::Result<(), HandlerError> {
    let _ = n;
    Ok(())
}

fn main() {
    #[anybus::subscriber(topic = "local", group = "inner")]
    async fn local(n: u64) -> std::result::Result<(), HandlerError> {
        let _ = n;
        Ok(())
    }

    assert_eq!(subscriber::subscription().spec().name, "subscriber");
    assert_eq!(handler::subscription().spec().name, "handler");
    assert_eq!(builder::subscription().spec().name, "builder");
    assert_eq!(visible::subscription().spec().topics, ["d"]);
    assert_eq!(local::subscription().spec().group, "inner");
}
