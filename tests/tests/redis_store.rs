//! The Redis dedup store against the Redis that `tests/brokers.sh up redis` starts (or
//! `ANYBUS_REDIS_URL`): the shared store suite (atomic reservations, lease expiry, completion
//! and release, a later member suppressing duplicates), and a fast, redacted start failure.
#![cfg(feature = "redis")]

fn url() -> String {
    std::env::var("ANYBUS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

anybus_conformance::store_suite!(url(), "redis");

#[tokio::test]
async fn an_unreachable_store_fails_the_start_fast_naming_it() {
    anybus_conformance::stores::an_unreachable_store_fails_the_start_fast_naming_it(
        "redis://user:hunter2@127.0.0.1:1",
        "redis://user:***@127.0.0.1:1",
    )
    .await;
}
