//! Where to connect: the AMQP URI as lapin's own parser reads it, shown only redacted, and how
//! a failed connection attempt is named.
//!
//! The password lives in one place, the parsed [`AMQPUri`] handed to lapin. Everything that is
//! printed (errors, logs, `Debug`) is built from the redacted URL, the user name, the virtual
//! host and the address; text that comes from outside (the broker's refusal, an I/O error) has
//! the password scrubbed before it is kept.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties, ErrorKind};

use crate::url::{BrokerUrl, ConnectError};

/// How long connecting may take when the URL's `connection_timeout` (milliseconds) says nothing.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A broker to connect to.
#[derive(Clone)]
pub(super) struct Target {
    /// Holds the password: handed to lapin, never printed.
    uri: AMQPUri,
    /// The URL with the password replaced by `***`.
    shown: String,
    timeout: Duration,
}

impl Target {
    /// Reads an `amqp://user:pass@host:port/vhost[?heartbeat=…&connection_timeout=ms]` URL.
    pub(super) fn parse(url: &BrokerUrl) -> Result<Self, ConnectError> {
        let shown = url.to_string();
        let raw = url.expose();
        let mut uri: AMQPUri = raw.parse().map_err(|reason: String| {
            // The parser's messages do not quote the URL today; make sure they never do.
            ConnectError::MalformedUrl {
                url: shown.clone(),
                reason: crate::url::scrub(raw, &reason),
            }
        })?;
        if uri.scheme == AMQPScheme::AMQPS {
            return Err(ConnectError::Unreachable {
                url: shown,
                reason: "amqps:// needs TLS, which this build of the rabbitmq backend does not \
                         include; connect with amqp:// (TLS support is a later feature)"
                    .into(),
            });
        }
        if let Some(ip) = ip_host(url.rest()) {
            // lapin's URI parser only keeps host names and silently turns an IP address into
            // `localhost`; keep the address the user wrote.
            uri.authority.host = ip.to_string();
        }
        let timeout = uri
            .query
            .connection_timeout
            .map_or(DEFAULT_CONNECT_TIMEOUT, Duration::from_millis);
        Ok(Self {
            uri,
            shown,
            timeout,
        })
    }

    /// The user name the connection logs in as.
    pub(super) fn user(&self) -> &str {
        &self.uri.authority.userinfo.username
    }

    /// The virtual host.
    pub(super) fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// `host:port`.
    pub(super) fn address(&self) -> String {
        let host = &self.uri.authority.host;
        if host.contains(':') {
            format!("[{host}]:{}", self.uri.authority.port)
        } else {
            format!("{host}:{}", self.uri.authority.port)
        }
    }

    /// Opens one connection, within the connect timeout.
    pub(super) async fn connect(&self) -> Result<Connection, ConnectError> {
        let properties = ConnectionProperties::default().with_connection_name("anybus".into());
        let attempt = Connection::connect_uri(self.uri.clone(), properties);
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(self.refusal(&error)),
            Err(_) => Err(self.unreachable(format!(
                "no answer from {} within {:?} (host unreachable or not a RabbitMQ broker?)",
                self.address(),
                self.timeout
            ))),
        }
    }

    /// A connect error for this target; `reason` must already be free of the password.
    pub(super) fn unreachable(&self, reason: String) -> ConnectError {
        ConnectError::Unreachable {
            url: self.shown.clone(),
            reason,
        }
    }

    /// The typed error naming the cause of a failed connection attempt, without the password.
    pub(super) fn refusal(&self, error: &lapin::Error) -> ConnectError {
        let (user, vhost, address) = (self.user(), self.vhost(), self.address());
        let reason = match error.kind() {
            ErrorKind::ProtocolError(amqp) => {
                let said = format!(
                    "the broker said: {}",
                    self.scrub(amqp.get_message().as_str())
                );
                match amqp.kind() {
                    AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => {
                        return ConnectError::AuthenticationFailed {
                            url: self.shown.clone(),
                            user: user.to_string(),
                            reason: said,
                        }
                    }
                    AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => {
                        return ConnectError::UnknownVhost {
                            url: self.shown.clone(),
                            vhost: vhost.to_string(),
                            user: user.to_string(),
                            reason: said,
                        }
                    }
                    _ => format!("the broker refused the connection: {said}"),
                }
            }
            ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                format!("connection refused by {address}: is the broker running there?")
            }
            ErrorKind::IOError(io) => format!("{address}: {}", self.scrub(&io.to_string())),
            _ => format!("{address}: {}", self.scrub(&error.to_string())),
        };
        self.unreachable(reason)
    }

    /// Removes the password from text that may have come from outside.
    pub(super) fn scrub(&self, text: &str) -> String {
        let password = &self.uri.authority.userinfo.password;
        if password.is_empty() {
            text.to_owned()
        } else {
            text.replace(password.as_str(), "***")
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.shown)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The host of `user:pass@host:port/vhost?…` if it is an IP address (IPv6 in brackets).
fn ip_host(rest: &str) -> Option<IpAddr> {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> Target {
        Target::parse(&BrokerUrl::parse(url).unwrap()).unwrap()
    }

    #[test]
    fn reads_user_vhost_and_address() {
        let t = target("amqp://app:s3cret@broker.example:5673/orders");
        assert_eq!(t.user(), "app");
        assert_eq!(t.vhost(), "orders");
        assert_eq!(t.address(), "broker.example:5673");
        assert_eq!(t.timeout, DEFAULT_CONNECT_TIMEOUT);
        let t = target("amqp://guest:guest@127.0.0.1:5672/%2f?connection_timeout=250");
        assert_eq!(t.vhost(), "/");
        assert_eq!(t.timeout, Duration::from_millis(250));
    }

    #[test]
    fn keeps_an_ip_address_host() {
        assert_eq!(
            target("amqp://u:p@10.1.2.3:5672/v").address(),
            "10.1.2.3:5672"
        );
        assert_eq!(target("amqp://u:p@[::1]:5672/v").address(), "[::1]:5672");
        assert_eq!(target("amqp://127.0.0.1").address(), "127.0.0.1:5672");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Neither a target's printed forms nor an error about its URL shows a piece of the
        /// password, whatever its characters, raw or percent-encoded.
        #[test]
        fn no_password_is_ever_shown((secret, written) in crate::url::leaks::password()) {
            for url in [
                format!("amqp://app:{written}@127.0.0.1:5672/%2f"),
                format!("amqp://app:{written}@broker:5672/orders?heartbeat=x"),
                format!("amqp://app:{written}@broker:notaport/v"),
                format!("amqps://app:{written}@broker/v"),
            ] {
                let Ok(broker) = BrokerUrl::parse(&url) else { continue };
                let shown = match Target::parse(&broker) {
                    Ok(t) => format!(
                        "{t} {t:?} {} {} {} {}",
                        t.user(),
                        t.vhost(),
                        t.address(),
                        t.unreachable("x".into())
                    ),
                    Err(e) => format!("{e} {e:?}"),
                };
                crate::url::leaks::assert_hidden(&shown, &secret, &written);
            }
        }
    }

    #[test]
    fn the_password_is_in_no_printed_form() {
        let t = target("amqp://app:pw-1c0dd@localhost:5672/%2f");
        for shown in [format!("{t}"), format!("{t:?}")] {
            assert!(!shown.contains("pw-1c0dd"), "{shown}");
        }
        let err = t.unreachable(t.scrub("refused: pw-1c0dd"));
        assert!(!format!("{err} {err:?}").contains("pw-1c0dd"));
    }

    #[test]
    fn amqps_is_refused_with_a_reason() {
        let url = BrokerUrl::parse("amqps://u:pw-9@host/v").unwrap();
        let err = Target::parse(&url).unwrap_err().to_string();
        assert!(err.contains("TLS") && !err.contains("pw-9"), "{err}");
    }

    #[test]
    fn a_bad_port_is_a_malformed_url() {
        // Refused as the URL is read (the `url` crate finds no port), before lapin sees it.
        let err = BrokerUrl::parse("amqp://u:pw-9@host:notaport/v").unwrap_err();
        assert!(matches!(err, ConnectError::MalformedUrl { .. }), "{err:?}");
        assert!(err.to_string().contains("invalid port"), "{err}");
        assert!(!err.to_string().contains("pw-9"));
    }

    #[test]
    fn refusals_name_their_cause() {
        use lapin::protocol::AMQPError;
        let t = target("amqp://app:pw@localhost/shop");
        let refused = |kind: AMQPErrorKind, text: &str| {
            t.refusal(&ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into())
        };
        let auth = refused(
            AMQPSoftError::ACCESSREFUSED.into(),
            "ACCESS_REFUSED - Login",
        );
        assert!(
            matches!(&auth, ConnectError::AuthenticationFailed { user, .. } if user == "app"),
            "{auth:?}"
        );
        assert!(
            auth.to_string()
                .contains("authentication failed for user `app`"),
            "{auth}"
        );
        let vhost = refused(AMQPHardError::NOTALLOWED.into(), "NOT_ALLOWED - vhost shop");
        assert!(
            matches!(&vhost, ConnectError::UnknownVhost { vhost, .. } if vhost == "shop"),
            "{vhost:?}"
        );
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let down = t.refusal(&io.into());
        assert!(matches!(down, ConnectError::Unreachable { .. }), "{down:?}");
        assert!(
            down.to_string()
                .contains("connection refused by localhost:5672"),
            "{down}"
        );
    }
}
