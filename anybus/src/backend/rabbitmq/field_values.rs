//! How the values of an AMQP header table, of any type another client writes, become anybus
//! header values (byte strings), with nothing dropped.
//!
//! anybus itself writes every header as a byte string (a long string). Other clients write
//! typed values, which are read as:
//!
//! | AMQP field value | anybus header value |
//! | --- | --- |
//! | long string, short string, byte array | its bytes |
//! | boolean | `true` or `false` |
//! | integer of any width, timestamp | its decimal text (`-5`) |
//! | float, double | its text (`1.5`, `NaN`) |
//! | decimal | its exact decimal text, the value read as signed as RabbitMQ and pika write it (`1.50`, `-2.5`) |
//! | void | the empty value: the header is there, with no bytes |
//! | array | one header per element, in order (an array in an array is flattened) |
//! | table | the table as JSON text, names in byte order (`{"a":1,"b":"x"}`, see below) |
//!
//! In a table's JSON a string (or byte array) is a JSON string, invalid UTF-8 replaced by
//! U+FFFD; a number, a decimal and a timestamp a JSON number; a boolean a JSON boolean; void
//! `null`; an array a JSON array; a float that is not finite a JSON string (`"NaN"`).
//! A header read this way is sent on (a retry copy, a dead letter) as that text, not as the
//! typed value it came as.

use bytes::Bytes;
use lapin::types::{AMQPValue, DecimalValue, FieldTable};

/// The bytes of a header value that is not an array (an array becomes one header per element:
/// see [`header_values`]).
pub(super) fn scalar(value: &AMQPValue) -> Bytes {
    let text = |t: String| Bytes::from(t);
    match value {
        AMQPValue::LongString(s) => Bytes::copy_from_slice(s.as_bytes()),
        AMQPValue::ShortString(s) => Bytes::copy_from_slice(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Bytes::copy_from_slice(b.as_slice()),
        AMQPValue::Void => Bytes::new(),
        AMQPValue::FieldTable(table) => {
            let mut json = String::new();
            table_json(table, &mut json);
            text(json)
        }
        AMQPValue::FieldArray(_) => {
            // Only a key comes here: an array of header values is split by `header_values`.
            let mut json = String::new();
            json_value(value, &mut json);
            text(json)
        }
        number => text(number_text(number).unwrap_or_default()),
    }
}

/// Every header value `value` stands for: one for a scalar, one per element for an array.
pub(super) fn header_values(value: &AMQPValue, out: &mut Vec<Bytes>) {
    match value {
        AMQPValue::FieldArray(values) => {
            for v in values.as_slice() {
                header_values(v, out);
            }
        }
        other => out.push(scalar(other)),
    }
}

/// The text of a boolean or number; `None` for the other kinds.
fn number_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::DecimalValue(d) => decimal_text(d),
        _ => return None,
    })
}

/// `value / 10^scale` as exact decimal text. AMQP 0-9-1 says the value is unsigned, but
/// RabbitMQ's errata and the clients (pika, the Java client) write a signed 32-bit integer.
fn decimal_text(decimal: &DecimalValue) -> String {
    let value = i32::from_be_bytes(decimal.value.to_be_bytes());
    let digits = value.unsigned_abs().to_string();
    let scale = usize::from(decimal.scale);
    let mut text = String::with_capacity(digits.len() + scale + 3);
    if value < 0 {
        text.push('-');
    }
    if scale == 0 {
        text.push_str(&digits);
        return text;
    }
    if digits.len() <= scale {
        text.push_str("0.");
        text.extend(std::iter::repeat_n('0', scale - digits.len()));
        text.push_str(&digits);
    } else {
        let (whole, fraction) = digits.split_at(digits.len() - scale);
        text.push_str(whole);
        text.push('.');
        text.push_str(fraction);
    }
    text
}

fn table_json(table: &FieldTable, out: &mut String) {
    out.push('{');
    for (i, (name, value)) in table.inner().iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(name.as_str(), out);
        out.push(':');
        json_value(value, out);
    }
    out.push('}');
}

fn json_value(value: &AMQPValue, out: &mut String) {
    match value {
        AMQPValue::LongString(s) => json_string(&String::from_utf8_lossy(s.as_bytes()), out),
        AMQPValue::ShortString(s) => json_string(s.as_str(), out),
        AMQPValue::ByteArray(b) => json_string(&String::from_utf8_lossy(b.as_slice()), out),
        AMQPValue::Void => out.push_str("null"),
        AMQPValue::FieldTable(table) => table_json(table, out),
        AMQPValue::FieldArray(values) => {
            out.push('[');
            for (i, v) in values.as_slice().iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_value(v, out);
            }
            out.push(']');
        }
        AMQPValue::Float(n) if !n.is_finite() => json_string(&n.to_string(), out),
        AMQPValue::Double(n) if !n.is_finite() => json_string(&n.to_string(), out),
        number => out.push_str(&number_text(number).unwrap_or_default()),
    }
}

fn json_string(text: &str, out: &mut String) {
    out.push_str(&serde_json::Value::from(text).to_string());
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString};

    use super::*;

    fn decimal(scale: u8, value: i32) -> AMQPValue {
        AMQPValue::DecimalValue(DecimalValue {
            scale,
            value: u32::from_be_bytes(value.to_be_bytes()),
        })
    }

    fn text(value: &AMQPValue) -> String {
        String::from_utf8(scalar(value).to_vec()).expect("utf8")
    }

    #[test]
    fn a_decimal_is_its_exact_signed_text() {
        assert_eq!(text(&decimal(2, 150)), "1.50");
        assert_eq!(text(&decimal(1, -25)), "-2.5");
        assert_eq!(text(&decimal(3, 5)), "0.005");
        assert_eq!(text(&decimal(3, -5)), "-0.005");
        assert_eq!(text(&decimal(0, 42)), "42");
        assert_eq!(text(&decimal(1, i32::MIN)), "-214748364.8");
    }

    #[test]
    fn void_is_an_empty_value() {
        let mut values = Vec::new();
        header_values(&AMQPValue::Void, &mut values);
        assert_eq!(values, [Bytes::new()]);
    }

    #[test]
    fn a_table_is_json_text_with_its_names_in_order() {
        let mut inner = FieldTable::default();
        inner.insert("none".into(), AMQPValue::Void);
        inner.insert("nan".into(), AMQPValue::Double(f64::NAN));
        let mut table = FieldTable::default();
        table.insert("b".into(), AMQPValue::LongString(LongString::from("x\"y")));
        table.insert("a".into(), AMQPValue::LongInt(1));
        table.insert("inner".into(), AMQPValue::FieldTable(inner));
        table.insert("price".into(), decimal(1, 15));
        table.insert(
            "list".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::Boolean(true),
                AMQPValue::ByteArray(vec![0xff, b'k'].into()),
            ])),
        );
        let json = text(&AMQPValue::FieldTable(table));
        assert_eq!(
            json,
            r#"{"a":1,"b":"x\"y","inner":{"nan":"NaN","none":null},"list":[true,"�k"],"price":1.5}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed["inner"]["none"], serde_json::Value::Null);
    }

    #[test]
    fn an_array_is_one_value_per_element() {
        let mut table = FieldTable::default();
        table.insert("k".into(), AMQPValue::ShortShortUInt(7));
        let array = AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongString(LongString::from("a")),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongLongInt(-5)])),
            AMQPValue::FieldTable(table),
        ]));
        let mut values = Vec::new();
        header_values(&array, &mut values);
        assert_eq!(values, ["a", "-5", r#"{"k":7}"#]);
    }
}
