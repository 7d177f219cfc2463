//! Group queues under the name earlier versions gave them, found and cut off from new events.
//!
//! Up to this version a group's queue was `{topic}.{group}`; a group with `%` or `.` in its
//! name (the replay group `anybus-replay.orders.dlq` among them) now consumes a queue of another
//! name (see `naming.rs`). Its old queue, if the broker still has it, stays bound to the topic
//! and would fill with every new event without anybody consuming it. So where the old queue
//! exists, its binding to the topic is removed (only that one: no other pair's queue is bound
//! under that name with that key, so the binding is the old group's own), the queue itself and
//! what is in it are left alone, and a warning names it, its message count and its replacement,
//! for an operator to move those messages (a shovel) or delete the queue. Moving them here
//! would mean consuming a queue whose name may be another group's under the new naming.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::Connection;

use super::declare::short_name;
use super::topology::{Superseded, Topology};

/// Unbinds and reports the superseded queues of `topology` that exist. Never fails: a queue
/// that cannot be looked at is logged and left as it is.
pub(super) async fn retire(connection: &Connection, topology: &Topology) {
    for old in &topology.superseded {
        if let Err(error) = retire_one(connection, old).await {
            tracing::debug!(
                queue = old.binding.queue,
                %error,
                "could not look for a queue of an earlier version's naming"
            );
        }
    }
}

async fn retire_one(connection: &Connection, old: &Superseded) -> Result<(), String> {
    let binding = &old.binding;
    let queue = short_name(&binding.queue).map_err(|e| e.to_string())?;
    // A passive declare of a queue that does not exist closes its channel: a channel of its own.
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let Ok(found) = channel
        .queue_declare(queue.clone(), passive, FieldTable::default())
        .await
    else {
        return Ok(());
    };
    let unbound = channel
        .queue_unbind(
            queue,
            short_name(&binding.exchange).map_err(|e| e.to_string())?,
            short_name(&binding.routing_key).map_err(|e| e.to_string())?,
            FieldTable::default(),
        )
        .await;
    if channel.status().connected() {
        let _ = channel.close(200, "looked".into()).await;
    }
    unbound.map_err(|e| e.to_string())?;
    tracing::warn!(
        queue = binding.queue,
        topic = binding.routing_key,
        replacement = old.replacement,
        messages = found.message_count(),
        consumers = found.consumer_count(),
        "a queue named as earlier versions of anybus named this group's queue exists; it is \
         now unbound from the topic so that it no longer fills, and the group consumes its \
         replacement. Move the messages left in it to the replacement (a shovel) or delete it"
    );
    Ok(())
}
