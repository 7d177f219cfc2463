//! Codecs turn payload bytes into typed values and back.
//!
//! A subscription picks its codec by type ([`Json`] unless told otherwise); the handler's payload
//! argument is decoded with it before the handler runs. A payload that does not decode is a
//! permanent failure: retrying cannot make the bytes valid.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode payload as {codec} into {target}: {reason}")]
pub struct DecodeError {
    /// The codec that tried (`json`, `raw`).
    pub codec: &'static str,
    /// The Rust type it was decoding into.
    pub target: &'static str,
    /// What the decoder said.
    pub reason: String,
}

/// Why a value could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {source_type} as {codec}: {reason}")]
pub struct EncodeError {
    /// The codec that tried.
    pub codec: &'static str,
    /// The Rust type it was encoding.
    pub source_type: &'static str,
    /// What the encoder said.
    pub reason: String,
}

/// Bytes ⇄ typed value. Implementations are zero-sized markers chosen by type, so decoding is
/// monomorphised into each handler and costs no dynamic dispatch.
pub trait Codec: Send + Sync + 'static {
    /// The name used in errors, in the macro's `codec = "…"` argument and in content-type headers.
    const NAME: &'static str;

    /// The media type of what it writes, sent as the [`content-type`](crate::header::CONTENT_TYPE)
    /// header.
    const CONTENT_TYPE: &'static str;

    /// Decodes a payload.
    fn decode<T: DeserializeOwned>(payload: &Bytes) -> Result<T, DecodeError>;

    /// Encodes a value.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, EncodeError>;
}

/// JSON through `serde_json`: the default codec.
///
/// ```
/// use anybus::codec::{Codec, Json};
/// let bytes = Json::encode(&vec![1, 2]).unwrap();
/// let back: Vec<u32> = Json::decode(&bytes).unwrap();
/// assert_eq!(back, [1, 2]);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl Codec for Json {
    const NAME: &'static str = "json";
    const CONTENT_TYPE: &'static str = "application/json";

    fn decode<T: DeserializeOwned>(payload: &Bytes) -> Result<T, DecodeError> {
        serde_json::from_slice(payload).map_err(|e| DecodeError {
            codec: Self::NAME,
            target: std::any::type_name::<T>(),
            reason: e.to_string(),
        })
    }

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, EncodeError> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| EncodeError {
                codec: Self::NAME,
                source_type: std::any::type_name::<T>(),
                reason: e.to_string(),
            })
    }
}

/// The payload bytes as they are: decodes into types that accept a byte string (`String` when the
/// bytes are UTF-8, `bytes::Bytes` with its `serde` feature, `serde_bytes::ByteBuf`), and encodes
/// values that serialize as bytes or a string. A handler that wants the whole message takes
/// [`Message`](crate::Message) as its payload argument instead, with any codec.
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw;

impl Codec for Raw {
    const NAME: &'static str = "raw";
    const CONTENT_TYPE: &'static str = "application/octet-stream";

    fn decode<T: DeserializeOwned>(payload: &Bytes) -> Result<T, DecodeError> {
        let de = serde::de::value::BytesDeserializer::<serde::de::value::Error>::new(payload);
        T::deserialize(de).map_err(|e| DecodeError {
            codec: Self::NAME,
            target: std::any::type_name::<T>(),
            reason: e.to_string(),
        })
    }

    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, EncodeError> {
        value
            .serialize(raw::BytesSerializer)
            .map_err(|e| EncodeError {
                codec: Self::NAME,
                source_type: std::any::type_name::<T>(),
                reason: e.to_string(),
            })
    }
}

mod raw {
    //! A serializer that accepts only byte strings and strings.
    use bytes::Bytes;
    use serde::ser::{self, Impossible, Serialize};

    pub(super) struct BytesSerializer;

    #[derive(Debug)]
    pub(super) struct Unsupported(String);

    impl std::fmt::Display for Unsupported {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Unsupported {}
    impl ser::Error for Unsupported {
        fn custom<T: std::fmt::Display>(msg: T) -> Self {
            Self(msg.to_string())
        }
    }

    fn unsupported<T>(what: &str) -> Result<T, Unsupported> {
        Err(Unsupported(format!(
            "the raw codec writes only bytes or strings, not {what}"
        )))
    }

    macro_rules! reject {
        ($($method:ident($($ty:ty),*) => $what:literal;)*) => {
            $(fn $method(self $(, _: $ty)*) -> Result<Bytes, Unsupported> { unsupported($what) })*
        };
    }

    impl ser::Serializer for BytesSerializer {
        type Ok = Bytes;
        type Error = Unsupported;
        type SerializeSeq = Impossible<Bytes, Unsupported>;
        type SerializeTuple = Impossible<Bytes, Unsupported>;
        type SerializeTupleStruct = Impossible<Bytes, Unsupported>;
        type SerializeTupleVariant = Impossible<Bytes, Unsupported>;
        type SerializeMap = Impossible<Bytes, Unsupported>;
        type SerializeStruct = Impossible<Bytes, Unsupported>;
        type SerializeStructVariant = Impossible<Bytes, Unsupported>;

        fn serialize_bytes(self, v: &[u8]) -> Result<Bytes, Unsupported> {
            Ok(Bytes::copy_from_slice(v))
        }
        fn serialize_str(self, v: &str) -> Result<Bytes, Unsupported> {
            Ok(Bytes::copy_from_slice(v.as_bytes()))
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            value: &T,
        ) -> Result<Bytes, Unsupported> {
            value.serialize(self)
        }
        reject! {
            serialize_bool(bool) => "a bool";
            serialize_i8(i8) => "a number";
            serialize_i16(i16) => "a number";
            serialize_i32(i32) => "a number";
            serialize_i64(i64) => "a number";
            serialize_u8(u8) => "a number";
            serialize_u16(u16) => "a number";
            serialize_u32(u32) => "a number";
            serialize_u64(u64) => "a number";
            serialize_f32(f32) => "a number";
            serialize_f64(f64) => "a number";
            serialize_char(char) => "a char";
            serialize_none() => "an option";
            serialize_unit() => "a unit";
            serialize_unit_struct(&'static str) => "a unit struct";
            serialize_unit_variant(&'static str, u32, &'static str) => "an enum";
        }
        fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Bytes, Unsupported> {
            unsupported("an option")
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: &T,
        ) -> Result<Bytes, Unsupported> {
            unsupported("an enum")
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
            unsupported("a sequence")
        }
        fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
            unsupported("a tuple")
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleStruct, Unsupported> {
            unsupported("a tuple struct")
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeTupleVariant, Unsupported> {
            unsupported("an enum")
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
            unsupported("a map")
        }
        fn serialize_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStruct, Unsupported> {
            unsupported("a struct")
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self::SerializeStructVariant, Unsupported> {
            unsupported("an enum")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reports_the_target_type_on_bad_input() {
        let err = Json::decode::<Vec<u32>>(&Bytes::from_static(b"{nope")).unwrap_err();
        assert_eq!(err.codec, "json");
        assert!(err.target.contains("Vec<u32>"), "{err}");
    }

    #[test]
    fn raw_round_trips_strings_and_rejects_structs() {
        let bytes = Raw::encode("hello").unwrap();
        assert_eq!(&bytes[..], b"hello");
        let back: String = Raw::decode(&bytes).unwrap();
        assert_eq!(back, "hello");
        assert!(Raw::decode::<String>(&Bytes::from_static(&[0xff, 0xfe])).is_err());
        assert!(Raw::encode(&vec![1u8]).is_err());
    }
}
