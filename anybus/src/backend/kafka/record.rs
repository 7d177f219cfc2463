//! How a fetched Kafka record becomes a [`Message`]: keys, payloads and header values copied
//! into shared buffers, header names read as bytes, whatever producer wrote them.
//!
//! A record is foreign input: no byte of it may stop the consumer. rdkafka's header iterator
//! panics on a header name that is not UTF-8 (and a panic in the poll thread kills the member;
//! nothing was committed, so the same record kills it again after every restart), so header
//! names are read as bytes through librdkafka's own accessor, and a name that is not UTF-8 is
//! delivered lossily (each bad byte sequence as U+FFFD) with a warning that shows its bytes.

use std::ffi::{c_char, c_void, CStr};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::types::RDKafkaRespErr;

use crate::message::{header, Headers, Message, MessageId, Origin, RecordIds};

/// Where the poll thread copies fetched keys, payloads and header values: one shared buffer
/// that messages take slices of, so a message costs no allocation of its own for them.
///
/// Copying each into a fresh allocation cost three allocations per message, all made on the
/// poll thread and freed on the runtime's, where the frees queued on the allocator's lock for
/// the poll thread's arena. A buffer holds about [`CopyBuffer::SIZE`] bytes of messages and is
/// freed when the last message cut from it is dropped, so a handler that keeps one message
/// keeps its neighbours' bytes too (the buffer it was cut from, or the two it straddles); a
/// value too big to share gets its own allocation.
#[derive(Default)]
pub(super) struct CopyBuffer {
    buf: BytesMut,
}

impl CopyBuffer {
    /// The size of a new buffer.
    const SIZE: usize = 64 * 1024;
    /// Values larger than this are copied on their own.
    const OWN: usize = Self::SIZE / 8;

    /// A copy of `data`.
    pub(super) fn copy(&mut self, data: &[u8]) -> Bytes {
        if data.is_empty() {
            return Bytes::new();
        }
        if data.len() > Self::OWN {
            return Bytes::copy_from_slice(data);
        }
        if self.buf.capacity() < data.len() {
            // Never grow a buffer that messages hold slices of: start a new one.
            self.buf = BytesMut::with_capacity(Self::SIZE);
        }
        self.buf.extend_from_slice(data);
        self.buf.split().freeze()
    }
}

/// Turns a fetched record into a [`Message`]; the id comes from the header anybus wrote, or,
/// for records of other producers, from the record's place ([`MessageId::of_record`]), so that
/// a redelivery of such a record has the same id (and deduplicates by it).
pub(super) fn to_message(
    m: &BorrowedMessage<'_>,
    topic: Arc<str>,
    ids: RecordIds,
    copies: &mut CopyBuffer,
) -> Message {
    let mut headers = Headers::new();
    let mut id = None;
    for_each_header(m, |name, value| {
        if name == header::MESSAGE_ID.as_bytes() {
            id = value
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(MessageId::parse);
            return;
        }
        let name = match std::str::from_utf8(name) {
            Ok(name) => name.to_owned(),
            Err(_) => {
                tracing::warn!(
                    topic = &*topic,
                    partition = m.partition(),
                    offset = m.offset(),
                    name = %name.escape_ascii(),
                    "a header name is not UTF-8: delivered with U+FFFD in place of the bad bytes"
                );
                String::from_utf8_lossy(name).into_owned()
            }
        };
        headers.append(name, copies.copy(value.unwrap_or_default()));
    });
    let timestamp_ms = m.timestamp().to_millis();
    let id = id.unwrap_or_else(|| ids.id(m.partition(), m.offset(), timestamp_ms));
    Message::from_parts(
        id,
        m.key().map(|k| copies.copy(k)),
        headers,
        copies.copy(m.payload().unwrap_or_default()),
        Origin {
            topic,
            partition: Some(m.partition()),
            offset: Some(m.offset()),
            delivery_tag: None,
            timestamp_ms,
        },
    )
}

/// Calls `f` with the name (as bytes) and value of each of the record's headers, in order.
fn for_each_header(m: &BorrowedMessage<'_>, mut f: impl FnMut(&[u8], Option<&[u8]>)) {
    let mut headers: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `m.ptr()` is the live librdkafka message `m` borrows; librdkafka sets `headers`
    // to the message's own header list (or returns an error and leaves it null), which lives
    // as long as the message, i.e. for the whole of this function.
    let found = unsafe { rdsys::rd_kafka_message_headers(m.ptr(), &mut headers) };
    if found != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
        return;
    }
    // SAFETY: `headers` is the valid list obtained above.
    let count = unsafe { rdsys::rd_kafka_header_cnt(headers) };
    for idx in 0..count {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_void = std::ptr::null();
        let mut size = 0usize;
        // SAFETY: `headers` is valid and `idx` below its count; the out-pointers point at
        // locals. On success librdkafka points `name` at the header's NUL-terminated name and
        // `value` at `size` bytes (or null for a null value), both owned by the message.
        let got = unsafe {
            rdsys::rd_kafka_header_get_all(headers, idx, &mut name, &mut value, &mut size)
        };
        if got != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            break;
        }
        // SAFETY: see above: a NUL-terminated name and `size` bytes of value, alive while the
        // message is, which outlives these borrows.
        let (name, value) = unsafe {
            (
                CStr::from_ptr(name).to_bytes(),
                (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size)),
            )
        };
        f(name, value);
    }
}
