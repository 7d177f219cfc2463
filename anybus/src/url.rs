//! Broker URLs: which backend to use and where it is, with the password kept out of every
//! message.

use std::fmt;

/// The URL schemes anybus knows, whether or not their backend is compiled in.
pub const SCHEMES: &[&str] = &["memory", "kafka", "amqp", "amqps"];

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
        let parsed = Self {
            raw: url.to_owned(),
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

/// Replaces the password of `scheme://user:password@host…` with `***`, and the value of any
/// query option whose name mentions a password or secret (`?sasl.password=…`).
pub fn redact(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret(k) => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret")
}

fn redact_userinfo(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let Some(at) = url[start..authority_end].rfind('@').map(|i| start + i) else {
        return url.to_owned();
    };
    match url[start..at].find(':') {
        Some(colon) => format!("{}***{}", &url[..start + colon + 1], &url[at..]),
        None => url.to_owned(),
    }
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
