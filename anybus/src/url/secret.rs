//! Which parts of a URL are secret, and text with them hidden.
//!
//! The redactor works on the URL as written, not on what a parser makes of it: it must hide the
//! password of URLs that do not parse, and a parser reads a password with an unencoded reserved
//! character as something else. (The `url` crate reads `amqp://u:12/34@h/v` as host `u`,
//! port 12 and path `/34@h/v`, so its `password()` is empty while the secret sits in the
//! path; `amqp://u:pa#ss@h/v` ends the authority at `#`.) So it hides generously:
//!
//! - **User-info**: after `scheme://`, up to the *last* `@` of the URL: from after the first
//!   `:` to that `@`. A password may hold `/`, `?`, `#` or `@` unencoded, and is hidden whole;
//!   the price is that an `@` further on (in a query value) hides the text before it too.
//! - **Secret options**: the value of every `key=value` after a `?` or `&` whose key names a
//!   secret (`password`, `passwd`, `secret`, `token`, a private key), up to the next
//!   `&name=` or the end, so an unencoded `&` inside the value stays hidden.
//!
//! Every hidden run is shown as `***`.

use std::borrow::Cow;
use std::ops::Range;

use percent_encoding::percent_decode_str;

/// The byte ranges of `url` that [`redact`] hides, sorted and disjoint.
pub(crate) fn spans(url: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    if let Some(userinfo) = password_span(url) {
        spans.push(userinfo);
    }
    for (key, value) in options_in(url) {
        if is_secret(key.text) {
            spans.push(value.range);
        }
    }
    spans.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if span.start <= last.end => last.end = last.end.max(span.end),
            _ => merged.push(span),
        }
    }
    merged
}

/// Where the password of `scheme://user:password@…` is: see the module docs.
pub(crate) fn password_span(url: &str) -> Option<Range<usize>> {
    let start = after_scheme(url);
    let at = start + url[start..].rfind('@')?;
    let colon = start + url[start..at].find(':')?;
    Some(colon + 1..at)
}

/// Where what follows `scheme://` starts: 0 when `url` does not start with a scheme (a
/// `://` inside a password is no scheme's).
pub(crate) fn after_scheme(url: &str) -> usize {
    match url.find("://") {
        Some(i)
            if url[..i].starts_with(|c: char| c.is_ascii_alphabetic())
                && url[..i]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            i + 3
        }
        _ => 0,
    }
}

/// `url` with every secret replaced by `***`.
pub fn redact(url: &str) -> String {
    mask(url, 0, &spans(url))
}

/// `text`, a slice of `url` starting at byte `offset`, with the parts of `spans` (ranges of
/// `url`) that fall inside it replaced by `***`.
pub(crate) fn mask(text: &str, offset: usize, spans: &[Range<usize>]) -> String {
    let end_of_text = offset + text.len();
    let mut out = String::with_capacity(text.len());
    let mut at = offset;
    for span in spans {
        let (start, end) = (span.start.max(at), span.end.min(end_of_text));
        // A span outside the slice, or one whose text lies wholly before or after it. (An
        // empty span, an empty password, still shows as `***` where it is.)
        if start > end || (start == end && !span.is_empty()) {
            continue;
        }
        out.push_str(&text[at - offset..start - offset]);
        out.push_str("***");
        at = end;
    }
    out.push_str(&text[at - offset..]);
    out
}

/// `text` from outside anybus (a client's error, a broker's refusal) with every secret of `url`
/// hidden: each secret as written and as decoded, and any piece of one that is six characters
/// or longer (a client may quote a password it split wrongly).
pub(crate) fn scrub(url: &str, text: &str) -> String {
    let mut secrets: Vec<String> = Vec::new();
    for span in spans(url) {
        let raw = &url[span];
        if raw.is_empty() {
            continue;
        }
        let decoded = percent_decode_str(raw).decode_utf8_lossy().into_owned();
        secrets.push(raw.to_owned());
        if decoded != raw {
            secrets.push(decoded);
        }
    }
    if secrets.is_empty() {
        return text.to_owned();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut hide = vec![false; chars.len()];
    for secret in &secrets {
        let secret: Vec<char> = secret.chars().collect();
        let piece = secret.len().min(6);
        for start in 0..chars.len() {
            // The longest run of `secret` that starts here.
            let longest = (0..secret.len())
                .map(|s| {
                    chars[start..]
                        .iter()
                        .zip(&secret[s..])
                        .take_while(|(a, b)| a == b)
                        .count()
                })
                .max()
                .unwrap_or(0);
            if longest >= piece {
                hide[start..start + longest]
                    .iter_mut()
                    .for_each(|h| *h = true);
            }
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut hiding = false;
    for (c, hidden) in chars.into_iter().zip(hide) {
        if hidden {
            if !hiding {
                out.push_str("***");
            }
        } else {
            out.push(c);
        }
        hiding = hidden;
    }
    out
}

/// Whether an option of this name holds a secret. Our own `password_env` and `password_file`
/// name where a secret is, and are not one.
pub(crate) fn is_secret(key: &str) -> bool {
    let key = percent_decode_str(key)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    if key.ends_with("_env") || key.ends_with("_file") {
        return false;
    }
    [
        "password", "passwd", "secret", "token", "key.pem", "private",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// A part of a URL: its text and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Part<'a> {
    pub(crate) text: &'a str,
    pub(crate) range: Range<usize>,
}

/// Every `key=value` option of `url` as the redactor sees them: after each `?` or `&` that
/// starts a `name=`, up to the next such `&`. A `?` inside a password starts options too: the
/// redactor hides more rather than less.
fn options_in(url: &str) -> Vec<(Part<'_>, Part<'_>)> {
    let mut found = Vec::new();
    let bytes = url.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'?' && b != b'&' {
            continue;
        }
        let Some(key_len) = name_at(&url[i + 1..]) else {
            continue;
        };
        let key = i + 1..i + 1 + key_len;
        let value_start = key.end + 1;
        let value_end = next_option(url, value_start);
        found.push((
            Part {
                text: &url[key.clone()],
                range: key,
            },
            Part {
                text: &url[value_start..value_end],
                range: value_start..value_end,
            },
        ));
    }
    found
}

/// The length of the option name at the start of `text` if `text` starts with `name=`.
fn name_at(text: &str) -> Option<usize> {
    let len = text
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || b"._-%".contains(b))
        .count();
    (len > 0 && text.as_bytes().get(len) == Some(&b'=')).then_some(len)
}

/// Where the value (or option) that starts at `from` ends: at the next `&name=`, or the end
/// of `url`.
fn next_option(url: &str, from: usize) -> usize {
    url[from..]
        .match_indices('&')
        .map(|(i, _)| from + i)
        .find(|&i| name_at(&url[i + 1..]).is_some())
        .unwrap_or(url.len())
}

/// The options of a query (the text after `?`), split as the redactor splits them: at each `&`
/// that starts a `name=`, so that an unencoded `&` in a value (`sasl.password=abc&xyz`) stays
/// in it. Each item is the option's whole text; `query` itself starts at byte `offset` of its
/// URL.
pub(crate) fn query_options(query: &str, offset: usize) -> Vec<Part<'_>> {
    let mut parts = Vec::new();
    let mut start = 0;
    while start <= query.len() {
        let end = next_option(query, start);
        if end > start {
            parts.push(Part {
                text: &query[start..end],
                range: offset + start..offset + end,
            });
        }
        start = end + 1;
    }
    parts
}

/// `text` percent-decoded, or why it cannot be (not UTF-8 once decoded).
pub(crate) fn decode(text: &str) -> Result<Cow<'_, str>, std::str::Utf8Error> {
    percent_decode_str(text).decode_utf8()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(redact("amqp://u:p@h:1/v"), "amqp://u:***@h:1/v");
        assert_eq!(redact("amqp://u@h:1/v"), "amqp://u@h:1/v");
        assert_eq!(redact("kafka://h:1,h2:2"), "kafka://h:1,h2:2");
        assert_eq!(redact("redis://:pw@h/0"), "redis://:***@h/0");
        assert_eq!(redact("amqp://u:p@ss@h/v"), "amqp://u:***@h/v");
        assert_eq!(
            redact("kafka://h:1?sasl.password=pw&fetch.wait.max.ms=10"),
            "kafka://h:1?sasl.password=***&fetch.wait.max.ms=10"
        );
    }

    #[test]
    fn a_password_with_a_reserved_character_is_hidden_whole() {
        // Each of these came back unchanged: the authority ended at the first `/`, `?` or `#`.
        for (url, shown) in [
            ("amqp://u:pa#ss@h/v", "amqp://u:***@h/v"),
            ("amqp://u:pa?ss@h/v", "amqp://u:***@h/v"),
            ("amqp://u:pa/ss@h/v", "amqp://u:***@h/v"),
            ("amqp://u:12/34@h/v", "amqp://u:***@h/v"),
            (
                "postgres://u:a?b=c@h/db?sslmode=disable",
                "postgres://u:***@h/db?sslmode=disable",
            ),
        ] {
            assert_eq!(redact(url), shown, "{url}");
        }
    }

    #[test]
    fn a_secret_option_is_hidden_up_to_the_next_option() {
        assert_eq!(
            redact("kafka://h:1?sasl.password=abc&xyz"),
            "kafka://h:1?sasl.password=***"
        );
        assert_eq!(
            redact("kafka://h:1?sasl.password=a&b#c&linger.ms=5"),
            "kafka://h:1?sasl.password=***&linger.ms=5"
        );
        assert_eq!(
            redact("kafka://h:1?ssl.key.pem=---&sasl.oauthbearer.client.secret=s"),
            "kafka://h:1?ssl.key.pem=***&sasl.oauthbearer.client.secret=***"
        );
        assert_eq!(
            redact("amqp://u@h/v?password_file=/run/secrets/amqp"),
            "amqp://u@h/v?password_file=/run/secrets/amqp"
        );
    }

    #[test]
    fn an_at_sign_in_a_query_hides_more_rather_than_less() {
        assert_eq!(
            redact("kafka://h:9092?sasl.username=me@corp.example"),
            "kafka://h:***@corp.example"
        );
    }

    #[test]
    fn query_options_keep_an_unencoded_ampersand_in_a_value() {
        let query = "a=1&sasl.password=abc&xyz&b=2";
        let parts: Vec<&str> = query_options(query, 0).iter().map(|p| p.text).collect();
        assert_eq!(parts, ["a=1", "sasl.password=abc&xyz", "b=2"]);
        let lone: Vec<&str> = query_options("flag&b=2", 0)
            .iter()
            .map(|p| p.text)
            .collect();
        assert_eq!(lone, ["flag", "b=2"]);
    }

    #[test]
    fn mask_hides_what_falls_inside_a_slice() {
        let url = "kafka://u:pa?ss@h:1";
        let spans = spans(url);
        let hosts = &url[8..12]; // "u:pa"
        assert_eq!(mask(hosts, 8, &spans), "u:***");
        assert_eq!(mask(&url[16..], 16, &spans), "h:1");
    }

    #[test]
    fn scrub_hides_secrets_as_written_decoded_and_in_pieces() {
        let url = "redis://:s3cr%23t-pass@h:6379/0";
        assert_eq!(scrub(url, "auth s3cr#t-pass failed"), "auth *** failed");
        assert_eq!(scrub(url, "bad s3cr%23t-pass"), "bad ***");
        assert_eq!(scrub(url, "port `t-pass@h`"), "port `***@h`");
        assert_eq!(scrub(url, "connection refused"), "connection refused");
    }
}
