//! A password given beside the URL rather than in it: `password_env=NAME` reads it from an
//! environment variable, `password_file=PATH` from a file (a Kubernetes or Docker secret
//! mount; one trailing newline is dropped). Either option works on every URL anybus reads, a
//! broker's or a dedup store's, and is taken out of the URL before a client sees it:
//!
//! - `amqp://`, `amqps://`, `postgres://`: the URL names the user (`amqp://app@host/vhost`);
//!   the password goes into its user-info, percent-encoded, so any character works.
//! - `redis://`, `rediss://`: as above; without a user, it is the `AUTH` password alone.
//! - `kafka://`: the password is the `sasl.password` option.
//!
//! A URL that has a password already and one of the options is refused, as is a variable that
//! is not set or empty and a file that cannot be read: at start, with the variable or file
//! named and nothing of the password shown.

use std::borrow::Cow;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

use super::secret::{after_scheme, decode, password_span, query_options, Part};

/// `url` with a `password_env` or `password_file` option resolved (see the module docs), or
/// why it cannot be. A URL without either comes back as it is.
pub(crate) fn resolve(url: &str) -> Result<Cow<'_, str>, String> {
    let scheme_end = after_scheme(url);
    let scheme = url[..scheme_end.saturating_sub(3)].to_ascii_lowercase();
    let after_password = password_span(url).map_or(scheme_end, |p| p.end);
    let Some(query_at) = url[after_password..].find('?').map(|i| after_password + i) else {
        return Ok(Cow::Borrowed(url));
    };
    let options = query_options(&url[query_at + 1..], query_at + 1);
    let is_source =
        |p: &&Part<'_>| p.text.starts_with("password_env=") || p.text.starts_with("password_file=");
    let mut sources = options.iter().filter(is_source);
    let Some(source) = sources.next() else {
        return Ok(Cow::Borrowed(url));
    };
    if sources.next().is_some() {
        return Err("give the password once: `password_env` or `password_file`, not both".into());
    }
    // Read only once the URL is known to take it, so that a URL wrong in itself says so.
    let encoded =
        || read(source.text).map(|p| utf8_percent_encode(&p, NON_ALPHANUMERIC).to_string());
    let rest: Vec<&str> = options
        .iter()
        .filter(|p| !is_source(p))
        .map(|p| p.text)
        .collect();
    let base = &url[..query_at];
    let with_query = |base: &str, rest: &[&str]| {
        if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", rest.join("&"))
        }
    };
    match scheme.as_str() {
        "kafka" => {
            if rest.iter().any(|p| p.starts_with("sasl.password=")) {
                return Err(
                    "the URL has `sasl.password` and a `password_env` or `password_file`: give \
                     the password once"
                        .into(),
                );
            }
            let sasl = format!("sasl.password={}", encoded()?);
            let mut rest = rest;
            rest.push(&sasl);
            Ok(Cow::Owned(with_query(base, &rest)))
        }
        scheme if super::HAS_USERINFO.contains(&scheme) => {
            if password_span(base).is_some() {
                return Err(
                    "the URL has a password and a `password_env` or `password_file`: give the \
                     password once"
                        .into(),
                );
            }
            let authority_end = base[scheme_end..]
                .find(['/', '?', '#'])
                .map_or(base.len(), |i| scheme_end + i);
            let at = base[scheme_end..authority_end].rfind('@');
            if at.is_none() && !scheme.starts_with("redis") {
                return Err(format!(
                    "a password from `password_env` or `password_file` needs the user name in \
                     the URL: `{scheme}://user@host/…`"
                ));
            }
            let encoded = encoded()?;
            let with_password = match at {
                Some(at) => {
                    let at = scheme_end + at;
                    format!("{}:{encoded}{}", &base[..at], &base[at..])
                }
                None => format!("{}:{encoded}@{}", &base[..scheme_end], &base[scheme_end..]),
            };
            Ok(Cow::Owned(with_query(&with_password, &rest)))
        }
        _ => Err(format!(
            "`{scheme}://` takes no password, so no `password_env` or `password_file`"
        )),
    }
}

/// The password that `option` (`password_env=NAME` or `password_file=PATH`) points to.
fn read(option: &str) -> Result<String, String> {
    let (key, value) = option.split_once('=').expect("a source option has `=`");
    let Ok(name) = decode(value) else {
        return Err(format!(
            "the value of `{key}` is not UTF-8 once percent-decoded"
        ));
    };
    let password = if key == "password_env" {
        std::env::var(name.as_ref()).map_err(|e| match e {
            std::env::VarError::NotPresent => {
                format!("environment variable `{name}` (from `password_env`) is not set")
            }
            std::env::VarError::NotUnicode(_) => {
                format!("environment variable `{name}` (from `password_env`) is not UTF-8")
            }
        })?
    } else {
        let mut text = std::fs::read_to_string(name.as_ref()).map_err(|e| {
            format!("cannot read the password file `{name}` (from `password_file`): {e}")
        })?;
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        text
    };
    if password.is_empty() {
        let what = if key == "password_env" {
            format!("environment variable `{name}`")
        } else {
            format!("password file `{name}`")
        };
        return Err(format!("{what} (from `{key}`) is empty"));
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A password with every character a URL reserves.
    const AWKWARD: &str = "p@ss:w/rd#?&=% é";

    fn file_with(contents: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("anybus-pw-{}", uuid::Uuid::now_v7()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn password_of(url: &str) -> String {
        let parsed = ::url::Url::parse(url).unwrap();
        decode(parsed.password().unwrap()).unwrap().into_owned()
    }

    #[test]
    fn a_password_from_the_environment_goes_into_the_user_info() {
        let name = format!("ANYBUS_TEST_PW_{}", uuid::Uuid::now_v7().simple());
        // The only test that sets a variable, under a name nothing else reads.
        std::env::set_var(&name, AWKWARD);
        let url = format!("amqp://app@h:5672/%2f?password_env={name}&heartbeat=10");
        let resolved = resolve(&url).unwrap();
        assert_eq!(password_of(&resolved), AWKWARD);
        assert!(resolved.ends_with("/%2f?heartbeat=10"), "{resolved}");
        assert!(!resolved.contains("password_env"), "{resolved}");
    }

    #[test]
    fn a_password_file_loses_one_trailing_newline() {
        let path = file_with(&format!("{AWKWARD}\n"));
        let url = format!("postgres://anybus@h/db?password_file={}", path.display());
        assert_eq!(password_of(&resolve(&url).unwrap()), AWKWARD);
        let crlf = file_with("two lines\r\n");
        let url = format!("redis://h:6379/0?password_file={}", crlf.display());
        let resolved = resolve(&url).unwrap();
        assert!(
            resolved.starts_with("redis://:two%20lines@h:6379/0"),
            "{resolved}"
        );
    }

    #[test]
    fn a_kafka_password_is_the_sasl_password_option() {
        let path = file_with(AWKWARD);
        let url = format!(
            "kafka://h:9092?password_file={}&sasl.username=u",
            path.display()
        );
        let resolved = resolve(&url).unwrap();
        let encoded = utf8_percent_encode(AWKWARD, NON_ALPHANUMERIC).to_string();
        assert_eq!(
            resolved,
            format!("kafka://h:9092?sasl.username=u&sasl.password={encoded}")
        );
    }

    #[test]
    fn a_url_without_the_options_is_left_alone() {
        let url = "amqp://u:p?x@h/v?heartbeat=1";
        assert!(matches!(resolve(url), Ok(Cow::Borrowed(u)) if u == url));
    }

    #[test]
    fn what_cannot_be_resolved_is_named() {
        let missing = format!("ANYBUS_TEST_UNSET_{}", uuid::Uuid::now_v7().simple());
        let empty = file_with("\n");
        for (url, says) in [
            (
                format!("amqp://u@h/v?password_env={missing}"),
                format!("`{missing}` (from `password_env`) is not set"),
            ),
            (
                "amqp://u@h/v?password_file=/nonexistent/pw".into(),
                "cannot read the password file `/nonexistent/pw`".into(),
            ),
            (
                format!("amqp://u@h/v?password_file={}", empty.display()),
                "is empty".into(),
            ),
            (
                "amqp://u:pw@h/v?password_env=X".into(),
                "has a password and".into(),
            ),
            (
                "kafka://h:1?sasl.password=a&password_env=X".into(),
                "give the password once".into(),
            ),
            (
                "amqp://u@h/v?password_env=X&password_file=Y".into(),
                "not both".into(),
            ),
            (
                "amqp://h/v?password_env=X".into(),
                "needs the user name".into(),
            ),
            (
                "memory://x?password_env=X".into(),
                "takes no password".into(),
            ),
        ] {
            let err = resolve(&url).unwrap_err();
            assert!(err.contains(&says), "{url}: {err}");
        }
    }
}
