//! Broker URLs: which backend to use and where it is, with the password kept out of every
//! message.

use std::fmt;

mod credentials;
mod secret;

#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) use credentials::resolve as resolve_credentials;
pub use secret::redact;
pub(crate) use secret::{decode, scrub};
#[cfg(feature = "kafka")]
pub(crate) use secret::{is_secret, query_options};

/// The URL schemes anybus knows, whether or not their backend is compiled in.
pub const SCHEMES: &[&str] = &["memory", "kafka", "amqp", "amqps"];

/// The schemes (of brokers and dedup stores) whose URLs carry `user:password@`.
const HAS_USERINFO: &[&str] = &["amqp", "amqps", "redis", "rediss", "postgres", "postgresql"];

/// What a URL whose user-info a URL parser reads differently from the redactor is told.
const ENCODE_CREDENTIALS: &str = "the user name or password does not read as written: \
    percent-encode `%`, `/`, `?`, `#`, `@` and `:` in them (`#` as `%23`, `/` as `%2F`), or \
    give the password with `password_env` or `password_file`";

/// Checks that a URL parser (the `url` crate, which lapin, redis and sqlx read URLs with) finds
/// the user name and password where the redactor does: so that the password the client is
/// given is the one the redactor hides, and no piece of it ends up in a host, path or virtual
/// host that anybus prints. Without user-info there is nothing to check.
pub(crate) fn check_credentials(url: &str) -> Result<(), String> {
    let Some(password) = secret::password_span(url) else {
        return Ok(());
    };
    let user = &url[secret::after_scheme(url)..password.start - 1];
    // The url crate's errors are fixed texts ("invalid port number"): they quote nothing.
    let parsed = ::url::Url::parse(url).map_err(|e| format!("{e}; or {ENCODE_CREDENTIALS}"))?;
    let same = |theirs: &str, ours: &str| decode(theirs).ok() == decode(ours).ok();
    if same(parsed.username(), user) && same(parsed.password().unwrap_or(""), &url[password]) {
        Ok(())
    } else {
        Err(ENCODE_CREDENTIALS.into())
    }
}

/// `url` with a password from `password_env` or `password_file` put in its place (the user
/// guide's "Credentials" section, `docs/backends.md`), or the URL itself when it has neither.
pub(crate) fn resolve_password(url: &str) -> Result<std::borrow::Cow<'_, str>, ConnectError> {
    credentials::resolve(url).map_err(|reason| ConnectError::Password {
        url: redact(url),
        reason,
    })
}

/// Why a broker URL could not be used, or a broker could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not of the form `scheme://…`.
    #[error("malformed broker URL `{url}`: {reason}")]
    MalformedUrl {
        /// The URL with any password replaced by `***`.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The scheme is not one anybus knows.
    #[error("unknown broker URL scheme `{scheme}` in `{url}`; supported schemes are memory://, kafka://, amqp:// and amqps://")]
    UnknownScheme {
        /// The scheme found.
        scheme: String,
        /// The URL with any password replaced by `***`.
        url: String,
    },
    /// The scheme needs a cargo feature that this build does not have.
    #[error("`{scheme}://` needs the `{feature}` cargo feature of anybus; enable it with `anybus = {{ features = [\"{feature}\"] }}`")]
    FeatureDisabled {
        /// The scheme found.
        scheme: String,
        /// The feature to enable.
        feature: &'static str,
    },
    /// The password that `password_env` or `password_file` names could not be read, or the URL
    /// gives a password twice.
    #[error("cannot use the password for {url}: {reason}")]
    Password {
        /// The URL as written, with any password replaced by `***`.
        url: String,
        /// What is wrong (the variable or file named, nothing of the password).
        reason: String,
    },
    /// The broker refused the user name or password.
    #[error("cannot connect to {url}: authentication failed for user `{user}`: check the user name and password ({reason})")]
    AuthenticationFailed {
        /// The URL with any password replaced by `***`.
        url: String,
        /// The user that was refused.
        user: String,
        /// What the broker said, without the password.
        reason: String,
    },
    /// The virtual host does not exist, or the user may not use it.
    #[error("cannot connect to {url}: virtual host `{vhost}` does not exist or user `{user}` may not use it ({reason})")]
    UnknownVhost {
        /// The URL with any password replaced by `***`.
        url: String,
        /// The virtual host asked for.
        vhost: String,
        /// The user asking.
        user: String,
        /// What the broker said, without the password.
        reason: String,
    },
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to {url}: {reason}")]
    Unreachable {
        /// The URL with any password replaced by `***`.
        url: String,
        /// What went wrong.
        reason: String,
    },
}

/// A parsed broker URL: a scheme and the rest, kept verbatim for the backend to read.
///
/// `Display` and `Debug` replace a password with `***`:
/// ```
/// use anybus::BrokerUrl;
/// let url = BrokerUrl::parse("amqp://app:s3cret@127.0.0.1:5672/%2f").unwrap();
/// assert_eq!(url.scheme(), "amqp");
/// assert_eq!(url.to_string(), "amqp://app:***@127.0.0.1:5672/%2f");
/// assert!(!format!("{url:?}").contains("s3cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    raw: String,
    scheme_end: usize,
}

impl BrokerUrl {
    /// Splits `scheme://rest`, checking only the shape; the backend checks the rest.
    pub fn parse(url: &str) -> Result<Self, ConnectError> {
        let malformed = |reason: &str| ConnectError::MalformedUrl {
            url: redact(url),
            reason: reason.to_owned(),
        };
        let Some(scheme_end) = url.find("://") else {
            return Err(malformed(
                "expected `scheme://…`, e.g. memory://, kafka://127.0.0.1:9092 or amqp://guest:guest@127.0.0.1:5672/%2f",
            ));
        };
        let scheme = &url[..scheme_end];
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(malformed(
                "the scheme before `://` is empty or has invalid characters",
            ));
        }
        if url.chars().any(char::is_whitespace) {
            return Err(malformed("URLs cannot contain whitespace"));
        }
        let resolved = resolve_password(url)?;
        if HAS_USERINFO.contains(&scheme) {
            check_credentials(&resolved).map_err(|reason| malformed(&reason))?;
        }
        let parsed = Self {
            raw: resolved.into_owned(),
            scheme_end,
        };
        if !SCHEMES.contains(&parsed.scheme()) {
            return Err(ConnectError::UnknownScheme {
                scheme: parsed.scheme().to_owned(),
                url: redact(url),
            });
        }
        Ok(parsed)
    }

    /// The scheme, e.g. `kafka`.
    pub fn scheme(&self) -> &str {
        &self.raw[..self.scheme_end]
    }

    /// Everything after `://`.
    pub fn rest(&self) -> &str {
        &self.raw[self.scheme_end + 3..]
    }

    /// The full URL including any password: for handing to a client library, never for printing.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// `part`, a slice of this URL (of [`expose`](Self::expose) or [`rest`](Self::rest)), as
    /// it may be printed: whatever of a secret falls inside it is `***`. Text that is not a
    /// slice of the URL is [scrubbed](scrub) instead.
    #[cfg_attr(not(any(feature = "kafka", test)), allow(dead_code))]
    pub(crate) fn show(&self, part: &str) -> String {
        let base = self.raw.as_ptr() as usize;
        let at = (part.as_ptr() as usize).wrapping_sub(base);
        if at > self.raw.len() || self.raw.len() - at < part.len() {
            return scrub(&self.raw, part);
        }
        secret::mask(part, at, &secret::spans(&self.raw))
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.raw))
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({})", redact(&self.raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_a_parser_reads_differently_is_refused_without_being_shown() {
        for url in [
            "amqp://u:pa#ss@h/v",
            "amqp://u:12/34@h/v",
            "amqp://u:pa?ss@h/v",
        ] {
            let err = BrokerUrl::parse(url).unwrap_err().to_string();
            assert!(err.contains("percent-encode"), "{url}: {err}");
            assert!(err.contains("amqp://u:***@h/v"), "{url}: {err}");
        }
        let ok = BrokerUrl::parse("amqp://u:pa%23ss%2F@h/v").unwrap();
        assert_eq!(ok.to_string(), "amqp://u:***@h/v");
        assert!(BrokerUrl::parse("amqp://me@corp:pw@h/v").is_ok());
    }

    #[test]
    fn show_masks_what_a_slice_holds_of_a_secret() {
        let url = BrokerUrl::parse("kafka://u:pa?ss@h:1").unwrap();
        assert_eq!(url.show(&url.rest()[..4]), "u:***");
        assert_eq!(url.show("not a slice: pa?ss@"), "not a slice: ***@");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// No printed form of a URL, and no error about it, shows its password or a piece of
        /// it: whatever characters the password has, raw or percent-encoded, wherever it is.
        #[test]
        fn no_password_is_ever_shown((secret, written) in leaks::password()) {
            let forms = [
                format!("amqp://app:{written}@127.0.0.1:5672/%2f"),
                format!("amqps://app:{written}@broker.internal:5671/orders?heartbeat=10"),
                format!("redis://:{written}@127.0.0.1:6379/0"),
                format!("postgres://anybus:{written}@127.0.0.1:5432/anybus?sslmode=disable"),
                format!("kafka://127.0.0.1:9092?sasl.username=u&sasl.password={written}&linger.ms=5"),
                format!("kafka://127.0.0.1:9092?sasl.password={written}"),
                format!("kafka://u:{written}@127.0.0.1:9092"),
                format!("nats://u:{written}@127.0.0.1:4222"),
                format!("u:{written}@127.0.0.1:5672"),
            ];
            for url in &forms {
                // `u:` and a password starting `//` is a URL of scheme `u`: nothing to redact.
                if url.starts_with("u://") {
                    continue;
                }
                // A raw `&name=` in a query value is the next option by the URL's own rules:
                // the value up to it is the password, and only that is checked.
                let secret_here = match url.find("sasl.password=") {
                    Some(_) if written == secret => first_option_value(&secret),
                    _ => secret.as_str(),
                };
                let written_here = match url.find("sasl.password=") {
                    Some(_) => first_option_value(&written),
                    None => written.as_str(),
                };
                // (A password cut to a few characters by a raw `&name=` is no longer one.)
                if secret_here.chars().count() < 6 || written_here.chars().count() < 6 {
                    continue;
                }
                let mut shown = vec![redact(url)];
                match BrokerUrl::parse(url) {
                    Ok(parsed) => {
                        shown.push(parsed.to_string());
                        shown.push(format!("{parsed:?}"));
                        shown.push(parsed.show(parsed.rest()));
                    }
                    Err(e) => {
                        shown.push(e.to_string());
                        shown.push(format!("{e:?}"));
                    }
                }
                if let Err(reason) = check_credentials(url) {
                    shown.push(reason);
                }
                // A client's error that quotes the URL and the password, as the dedup stores
                // report them.
                let quoted = crate::dedup::DedupError::new(
                    url,
                    format!("cannot connect to {url} with password {secret_here}"),
                );
                shown.push(quoted.to_string());
                shown.push(format!("{quoted:?}"));
                for text in &shown {
                    leaks::assert_hidden(text, secret_here, written_here);
                }
            }
        }
    }

    /// `value` up to the first `&name=` in it.
    fn first_option_value(value: &str) -> &str {
        let query = format!("x={value}");
        let first = secret::query_options(&query, 0)[0].text.len() - 2;
        &value[..first]
    }

    #[test]
    fn unknown_scheme_lists_the_supported_ones() {
        let err = BrokerUrl::parse("nats://x:secret@h").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`nats`") && text.contains("kafka://"),
            "{text}"
        );
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn malformed_url_says_what_is_wrong() {
        let err = BrokerUrl::parse("127.0.0.1:9092").unwrap_err();
        assert!(matches!(err, ConnectError::MalformedUrl { .. }));
        assert!(err.to_string().contains("expected `scheme://"), "{err}");
    }
}

/// Random passwords and the check that none of them is ever shown, for the property tests of
/// every parser that reads a URL.
#[cfg(test)]
pub(crate) mod leaks {
    use proptest::prelude::*;

    /// Passwords of 8 to 24 printable ASCII characters (space and every reserved one
    /// included) or any Unicode, as written in a URL: raw, or percent-encoded whole.
    pub(crate) fn password() -> impl Strategy<Value = (String, String)> {
        let secret = prop_oneof![
            proptest::string::string_regex("[ -~]{8,24}").unwrap(),
            proptest::string::string_regex("\\PC{8,16}").unwrap(),
        ];
        (secret, any::<bool>()).prop_map(|(secret, encode)| {
            let written = if encode {
                percent_encoding::utf8_percent_encode(&secret, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            } else {
                secret.clone()
            };
            (secret, written)
        })
    }

    /// Panics if `shown` holds any six characters in a row of `secret` or of `written` (its
    /// form in the URL), or the whole of either when it is shorter.
    pub(crate) fn assert_hidden(shown: &str, secret: &str, written: &str) {
        for form in [secret, written] {
            let chars: Vec<char> = form.chars().collect();
            let width = chars.len().min(6);
            for piece in chars.windows(width) {
                let piece: String = piece.iter().collect();
                assert!(
                    !shown.contains(&piece),
                    "`{piece}` of the password is shown in: {shown}"
                );
            }
        }
    }
}
