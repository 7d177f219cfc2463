//! The conformance suite on the embedded memory backend.

anybus_conformance::conformance_suite!(anybus_conformance::Env::memory());

/// Memory-only: the embedded broker can cut a group off (`MemoryBroker::disconnect`), which the
/// other brokers do not let a test do on demand.
mod stops {
    use anybus::backend::memory::MemoryBroker;
    use anybus::{HandlerError, Message, Subscription};
    use anybus_conformance::{Env, PATIENCE};

    /// A subscription whose consumer fails for good ends `App::run` with an error that names it,
    /// and health shows it not consuming: the app does not run on without consuming.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_that_stops_consuming_ends_the_run() {
        let env = Env::memory();
        let group = env.unique("g");
        let app = env
            .start(vec![Subscription::builder(["stops"])
                .name("doomed")
                .group(&group)
                .handler(|_: Message| {
                    std::future::ready(Ok::<(), HandlerError>(()))
                })])
            .await;
        let mut assignment = app.assignment("doomed").expect("subscribed");
        tokio::time::timeout(PATIENCE, assignment.wait_for(|a| !a.is_empty()))
            .await
            .expect("assigned in time")
            .expect("assigned");
        let broker = env.url.trim_start_matches("memory://");
        MemoryBroker::named(broker).disconnect(&group);
        tokio::time::timeout(PATIENCE, assignment.wait_for(|a| a.is_empty()))
            .await
            .expect("the member lets its partitions go")
            .expect("unassigned");
        let health = app.health();
        assert!(!health[0].consuming, "{health:?}");
        let ended = tokio::time::timeout(PATIENCE, app.run())
            .await
            .expect("the run ends by itself");
        let error = ended.expect_err("a subscription stopped");
        assert_eq!(error.subscription, "doomed");
        assert!(error.to_string().contains("disconnected"), "{error}");
    }
}
