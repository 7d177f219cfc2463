//! A group member for the Kafka crash test: handles messages until offset `BLOCK_AT`, where its
//! handler never returns, and prints what it does; the test then kills it with SIGKILL.
//!
//! Usage: `kafka_crash_member URL TOPIC GROUP BLOCK_AT`

use std::io::Write;

use anybus::{App, Context, HandlerError, Message, Subscription};

fn say(what: &str, offset: i64) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what} {offset}");
    let _ = out.flush();
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, topic, group, block_at] = args.as_slice() else {
        return Err("usage: kafka_crash_member URL TOPIC GROUP BLOCK_AT".into());
    };
    let block_at: i64 = block_at.parse()?;
    let app = App::builder()
        .subscribe(
            Subscription::builder([topic.as_str()])
                .group(group.as_str())
                .handler(move |_: Message, ctx: Context| async move {
                    let offset = ctx.offset().unwrap_or(-1);
                    let blocked = offset >= block_at;
                    say(if blocked { "blocked" } else { "handled" }, offset);
                    if blocked {
                        std::future::pending::<()>().await;
                    }
                    Ok::<(), HandlerError>(())
                }),
        )
        .connect(url)
        .await?;
    app.run().await?;
    Ok(())
}
