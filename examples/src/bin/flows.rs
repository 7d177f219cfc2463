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
//!
//! With `--features postgres` and `ANYBUS_STOCK_DB=postgres://…`, the inventory keeps its
//! stock in that database and reserves it effectively once ([`anybus_examples::orders::stock_db`]),
//! in a schema of its own that is dropped at the end:
//!
//! ```text
//! ANYBUS_STOCK_DB=postgres://anybus:anybus@127.0.0.1:5432/anybus \
//!     cargo run -p anybus-examples --features postgres --bin flows
//! ```

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
    let inventory = Shelf::open(&stores).await?;
    let app = inventory
        .app(&stores)
        .drain_timeout(DRAIN_TIMEOUT)
        .connect(url)
        .await
        .map_err(|e| format!("cannot start on {shown}: {e}"))?;
    println!("anybus flows on {shown}{}", inventory.describe());

    let outcome = async {
        let run = scenario::start(&app.publisher(), REQUEST_TIMEOUT).await?;
        scenario::finish(&run, &stores.story, FLOW_TIMEOUT).await?;
        Ok::<_, scenario::ScenarioError>(run)
    }
    .await;
    // Shut down gracefully whatever happened, then report.
    let stopped = app.shutdown().await;
    let levels = inventory.levels(&stores).await;
    inventory.close().await;
    let run = outcome?;
    for line in run.report(&stores.story) {
        println!("{line}");
    }
    let stock: Vec<String> = levels?
        .iter()
        .map(|(sku, n)| format!("{n} × {sku}"))
        .collect();
    println!("left on the shelf: {}", stock.join(", "));
    stopped?;
    Ok(())
}

/// Where the inventory keeps its stock: in memory (in `Stores`), or in PostgreSQL.
enum Shelf {
    Memory,
    #[cfg(feature = "postgres")]
    Postgres {
        db: anybus_examples::orders::stock_db::StockDb,
        url: String,
    },
}

impl Shelf {
    /// PostgreSQL if `ANYBUS_STOCK_DB` says so.
    async fn open(_stores: &Stores) -> Result<Self, Box<dyn Error>> {
        let Ok(url) = std::env::var("ANYBUS_STOCK_DB") else {
            return Ok(Self::Memory);
        };
        #[cfg(feature = "postgres")]
        {
            let db = anybus_examples::orders::stock_db::StockDb::create(
                &url,
                scenario::STOCK.iter().copied(),
            )
            .await
            .map_err(|e| {
                format!(
                    "cannot open the stock database {}: {e}",
                    anybus::redact(&url)
                )
            })?;
            Ok(Self::Postgres { db, url })
        }
        #[cfg(not(feature = "postgres"))]
        {
            let _ = url;
            Err("ANYBUS_STOCK_DB needs the examples built with `--features postgres`".into())
        }
    }

    fn app(&self, stores: &Stores) -> anybus::AppBuilder {
        match self {
            Self::Memory => app(stores),
            #[cfg(feature = "postgres")]
            Self::Postgres { db, url } => anybus_examples::app_with_stock_db(stores, db, url),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::Memory => "",
            #[cfg(feature = "postgres")]
            Self::Postgres { .. } => ", the inventory in PostgreSQL",
        }
    }

    async fn levels(
        &self,
        stores: &Stores,
    ) -> Result<std::collections::BTreeMap<String, u32>, Box<dyn Error>> {
        match self {
            Self::Memory => Ok(stores.inventory.levels()),
            #[cfg(feature = "postgres")]
            Self::Postgres { db, .. } => Ok(db.levels().await?),
        }
    }

    async fn close(&self) {
        #[cfg(feature = "postgres")]
        if let Self::Postgres { db, .. } = self {
            if let Err(e) = db.drop_schema().await {
                eprintln!("flows: could not drop the stock schema: {e}");
            }
        }
    }
}
