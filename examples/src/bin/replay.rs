//! Moves dead letters back to the topic they came from, with [`anybus::replay`].
//!
//! ```text
//! cargo run -p anybus-examples --bin replay                      # a demo on memory://
//! ANYBUS_URL=kafka://127.0.0.1:9092 \
//!   cargo run -p anybus-examples --features kafka --bin replay -- orders.created.dlq 10
//! ```
//!
//! With a dead-letter topic (and optionally a count), it replays that topic's dead letters as
//! the group `anybus-replay.{topic}` until it has replayed the count, or until none came for
//! five seconds, then stops; each dead letter is replayed once, since the group remembers what
//! it replayed. With no arguments it runs a demo: an order event that a handler refuses until a
//! fix lands goes to `demo.orders.dlq`; the fix lands, the replay brings the event back, and the
//! handler takes it, with the same message id.

use std::error::Error;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anybus::{App, BrokerUrl, HandlerError, Message, Subscription, REPLAY_SUBSCRIPTION};
use tokio::sync::mpsc;

/// How long the replay waits for one more dead letter before it stops.
const IDLE: Duration = Duration::from_secs(5);
/// How long the demo waits for each of its steps.
const STEP: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    let url = std::env::var("ANYBUS_URL").unwrap_or_else(|_| "memory://".to_owned());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let done = match args.first() {
        Some(topic) => {
            let count = args.get(1).and_then(|c| c.parse().ok()).unwrap_or(u64::MAX);
            replay(&url, topic, count).await
        }
        None => demo(&url).await,
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Replays up to `count` dead letters of `topic`, stopping early after [`IDLE`] without one.
async fn replay(url: &str, topic: &str, count: u64) -> Result<(), Box<dyn Error>> {
    let shown = BrokerUrl::parse(url)?;
    let app = App::builder()
        .subscribe(anybus::replay(topic))
        .connect(url)
        .await
        .map_err(|e| format!("cannot start on {shown}: {e}"))?;
    let (mut replayed, mut last, mut at) = (0, 0, Instant::now());
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while replayed < count && at.elapsed() < IDLE {
        tick.tick().await;
        replayed = replayed_so_far(&app);
        if replayed != last {
            (last, at) = (replayed, Instant::now());
        }
    }
    app.shutdown().await?;
    println!("replayed {replayed} dead letter(s) of {topic} on {shown}");
    Ok(())
}

fn replayed_so_far(app: &App) -> u64 {
    app.stats()
        .iter()
        .find(|s| s.name == REPLAY_SUBSCRIPTION)
        .map_or(0, |s| s.stats.handled)
}

/// An event refused until a fix lands is dead-lettered, then replayed and handled.
async fn demo(url: &str) -> Result<(), Box<dyn Error>> {
    let topic = "demo.orders";
    let fixed = Arc::new(AtomicBool::new(false));
    let (tx, mut handled) = mpsc::unbounded_channel();
    let f = Arc::clone(&fixed);
    let app = App::builder()
        .subscribe(
            Subscription::builder([topic])
                .group("demo-shipping")
                .handler(move |m: Message| {
                    let result = if f.load(Ordering::SeqCst) {
                        let _ = tx.send(m.id());
                        Ok(())
                    } else {
                        Err(HandlerError::permanent(std::io::Error::other(
                            "no carrier for this country yet",
                        )))
                    };
                    std::future::ready(result)
                }),
        )
        .connect(url)
        .await?;
    let event = Message::new(topic, r#"{"order":42,"country":"IS"}"#).with_key("order-42");
    app.publisher().send(event.clone()).await?;
    println!("published order 42 ({})", event.id());

    let deadline = Instant::now() + STEP;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while app.stats()[0].stats.dead_lettered == 0 {
        if Instant::now() > deadline {
            return Err("the refused event was not dead-lettered in time".into());
        }
        tick.tick().await;
    }
    println!("shipping refused it: it is in {topic}.dlq");

    fixed.store(true, Ordering::SeqCst);
    println!("the fix landed; replaying {topic}.dlq");
    let replayer = App::builder()
        .subscribe(anybus::replay(&format!("{topic}.dlq")))
        .connect(url)
        .await?;
    let id = tokio::time::timeout(STEP, handled.recv())
        .await
        .map_err(|_| "the replayed event was not handled in time")?
        .ok_or("the handler is gone")?;
    println!(
        "shipping took the replayed event ({id}, {} id)",
        if id == event.id() {
            "the same"
        } else {
            "a new"
        }
    );
    replayer.shutdown().await?;
    app.shutdown().await?;
    Ok(())
}
