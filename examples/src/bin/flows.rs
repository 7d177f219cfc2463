//! Runs the user-registration and order flows once and prints what happened.
//!
//! ```text
//! cargo run -p anybus-examples --bin flows
//! ANYBUS_URL=memory://demo RUST_LOG=info cargo run -p anybus-examples --bin flows
//! ```
//!
//! The broker comes from `ANYBUS_URL` (default `memory://`); logs go to stderr, filtered by
//! `RUST_LOG` (default `warn`). Exits 0 once every flow ended, 1 if one did not within the time
//! limit or the app could not start.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use anybus::BrokerUrl;
use anybus_examples::orders::inventory::Inventory;
use anybus_examples::{app, scenario, Stores};
use tracing_subscriber::EnvFilter;

/// How long each request waits for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the flows may take after the last request was answered.
const FLOW_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for handlers still running.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let url = std::env::var("ANYBUS_URL").unwrap_or_else(|_| "memory://".to_owned());
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flows: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<(), Box<dyn Error>> {
    // Shown instead of `url`: it hides a password.
    let shown = BrokerUrl::parse(url)?;
    let stores = Stores::new(Inventory::with_stock(scenario::STOCK.iter().copied()));
    let app = app(&stores)
        .drain_timeout(DRAIN_TIMEOUT)
        .connect(url)
        .await
        .map_err(|e| format!("cannot start on {shown}: {e}"))?;
    println!("anybus flows on {shown}");

    let outcome = async {
        let run = scenario::start(&app.publisher(), REQUEST_TIMEOUT).await?;
        scenario::finish(&run, &stores.story, FLOW_TIMEOUT).await?;
        Ok::<_, scenario::ScenarioError>(run)
    }
    .await;
    // Shut down gracefully whatever happened, then report.
    let stopped = app.shutdown().await;
    let run = outcome?;
    for line in run.report(&stores.story) {
        println!("{line}");
    }
    let stock: Vec<String> = stores
        .inventory
        .levels()
        .iter()
        .map(|(sku, n)| format!("{n} × {sku}"))
        .collect();
    println!("left on the shelf: {}", stock.join(", "));
    stopped?;
    Ok(())
}
