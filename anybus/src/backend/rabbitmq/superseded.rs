//! Group queues under the name earlier versions gave them, cut off from new events.
//!
//! Up to this version a group's queue was `{topic}.{group}`; a group with `%` or `.` in its
//! name (the replay group `anybus-replay.orders.dlq` among them) now consumes a queue of another
//! name (see `naming.rs`). Its old queue, if the broker still has it, stays bound to the topic
//! and would fill with every new event without anybody consuming it. So the binding earlier
//! versions made, old name to the events exchange by the topic, is removed wherever a group
//! queue is declared. That binding is the old group's alone: under the new naming a queue of
//! that name belongs to another topic (`orders.eu.billing` is group `billing` on `orders.eu`)
//! and is bound by that topic, which stays. RabbitMQ unbinds a queue that does not exist
//! without complaint, so nothing needs to know whether the old queue is there.
//!
//! What the old queue holds is left in it, for an operator to move (a shovel) or delete: moving
//! it here would mean consuming a queue that may be another group's. Finding out whether it
//! exists takes a passive declare, which the broker answers, where it does not, by closing the
//! channel, and lapin logs that as an error: on every start of every app with a dead-letter
//! topic. So the log says where to look, at `info`, instead of looking.

use lapin::types::FieldTable;
use lapin::Connection;

use super::declare::short_name;
use super::topology::{Superseded, Topology};

/// Removes the old bindings of `topology`'s superseded queues. Never fails: a binding that
/// cannot be removed is logged, and the next connection tries again.
pub(super) async fn retire(connection: &Connection, topology: &Topology) {
    if topology.superseded.is_empty() {
        return;
    }
    let channel = match connection.create_channel().await {
        Ok(channel) => channel,
        Err(error) => {
            tracing::debug!(%error, "no channel to unbind the queues of the earlier naming on");
            return;
        }
    };
    for old in &topology.superseded {
        match unbind(&channel, old).await {
            Ok(()) => tracing::info!(
                old_queue = old.binding.queue,
                topic = old.binding.routing_key,
                queue = old.replacement,
                "this group's queue was named `{}` before; if a queue of that name exists, it \
                 no longer gets the topic's events and keeps what it had: move that to `{}` or \
                 delete it (unless another group consumes it)",
                old.binding.queue,
                old.replacement
            ),
            Err(error) => tracing::warn!(
                old_queue = old.binding.queue,
                topic = old.binding.routing_key,
                %error,
                "could not unbind the queue of the earlier naming from its topic"
            ),
        }
    }
    if channel.status().connected() {
        let _ = channel.close(200, "unbound".into()).await;
    }
}

async fn unbind(channel: &lapin::Channel, old: &Superseded) -> Result<(), String> {
    let binding = &old.binding;
    let name = |text: &str| short_name(text).map_err(|e| e.to_string());
    channel
        .queue_unbind(
            name(&binding.queue)?,
            name(&binding.exchange)?,
            name(&binding.routing_key)?,
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())
}
