//! The arguments of `#[subscriber(...)]`, parsed into typed options. Every error is spanned on
//! the offending token; all errors are reported together.

use proc_macro2::Span;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprArray, ExprCall, ExprLit, Lit, LitStr, Meta, Path, Token};

/// The top-level arguments, in the order the error message lists them.
pub const ARGUMENTS: &[&str] = &[
    "topic",
    "group",
    "codec",
    "concurrency",
    "ordering",
    "partitions",
    "retry",
    "dead_letter",
    "dedup",
];

const RETRY_ARGUMENTS: &[&str] = &[
    "max_attempts",
    "backoff",
    "initial",
    "max",
    "jitter",
    "mode",
];

pub enum DeadLetter {
    Default,
    Topic(LitStr),
    Disabled,
}

pub enum Dedup {
    MessageId,
    Field(LitStr),
    Header(LitStr),
    Function(syn::ExprPath),
}

#[derive(Default)]
pub struct Retry {
    pub max_attempts: Option<u32>,
    pub backoff: Option<&'static str>,
    pub initial: Option<u64>,
    pub max: Option<u64>,
    pub jitter: Option<bool>,
    pub mode: Option<&'static str>,
}

#[derive(Default)]
pub struct Args {
    pub topics: Vec<LitStr>,
    pub group: Option<LitStr>,
    pub codec: Option<&'static str>,
    pub concurrency: Option<usize>,
    pub ordering: Option<&'static str>,
    pub partitions: Option<u32>,
    pub retry: Option<Retry>,
    pub dead_letter: Option<DeadLetter>,
    pub dedup: Option<Dedup>,
}

/// Collects errors so that a user sees every bad argument at once.
#[derive(Default)]
pub struct Errors(Option<syn::Error>);

impl Errors {
    pub fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    pub fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

fn key_of(path: &Path) -> String {
    path.get_ident()
        .map_or_else(|| quote::quote!(#path).to_string(), ToString::to_string)
}

fn unknown(path: &Path, valid: &[&str], what: &str) -> syn::Error {
    syn::Error::new_spanned(
        path,
        format!(
            "unknown {what} `{}`; expected one of: {}",
            key_of(path),
            valid.join(", ")
        ),
    )
}

fn repeated(path: &Path) -> syn::Error {
    syn::Error::new_spanned(
        path,
        format!("`{}` is specified more than once", key_of(path)),
    )
}

fn name_value(meta: &Meta) -> syn::Result<&Expr> {
    match meta {
        Meta::NameValue(nv) => Ok(&nv.value),
        Meta::Path(p) => Err(syn::Error::new_spanned(
            p,
            format!("`{0}` needs a value: `{0} = …`", key_of(p)),
        )),
        Meta::List(l) => Err(syn::Error::new_spanned(
            &l.path,
            format!(
                "`{0}` takes a value: `{0} = …`, not `{0}(…)`",
                key_of(&l.path)
            ),
        )),
    }
}

fn lit_str(expr: &Expr, what: &str) -> syn::Result<LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected a string literal for {what}"),
        )),
    }
}

fn lit_int<N: std::str::FromStr>(expr: &Expr, what: &str) -> syn::Result<N>
where
    N::Err: std::fmt::Display,
{
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => {
            let n: N = i.base10_parse()?;
            Ok(n)
        }
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected an integer for {what}"),
        )),
    }
}

fn lit_bool(expr: &Expr, what: &str) -> syn::Result<bool> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        other => Err(syn::Error::new_spanned(
            other,
            format!("expected `true` or `false` for {what}"),
        )),
    }
}

/// A string literal that must be one of `choices`; returns the matching choice.
fn choice(expr: &Expr, what: &str, choices: &[&'static str]) -> syn::Result<&'static str> {
    let s = lit_str(expr, what)?;
    let value = s.value();
    choices
        .iter()
        .find(|c| **c == value)
        .copied()
        .ok_or_else(|| {
            syn::Error::new_spanned(
                &s,
                format!(
                    "invalid {what} `{value}`; expected one of: {}",
                    choices
                        .iter()
                        .map(|c| format!("\"{c}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
}

fn positive<N: Default + PartialEq>(n: N, expr: &Expr, what: &str) -> syn::Result<N> {
    if n == N::default() {
        Err(syn::Error::new_spanned(
            expr,
            format!("{what} must be at least 1"),
        ))
    } else {
        Ok(n)
    }
}

/// `"250ms"`, `"30s"`, `"2m"`, `"1h"` → milliseconds.
fn duration_ms(expr: &Expr, what: &str) -> syn::Result<u64> {
    let s = lit_str(expr, what)?;
    let text = s.value();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "ms" => Some(1),
        "s" => Some(1_000),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        _ => None,
    };
    match (number.parse::<u64>(), scale) {
        (Ok(n), Some(scale)) => n.checked_mul(scale).ok_or_else(|| {
            syn::Error::new_spanned(&s, format!("{what} `{text}` is too long"))
        }),
        _ => Err(syn::Error::new_spanned(
            &s,
            format!("invalid duration `{text}` for {what}; write a whole number with a unit: \"250ms\", \"30s\", \"2m\" or \"1h\""),
        )),
    }
}

fn topics(expr: &Expr) -> syn::Result<Vec<LitStr>> {
    let list = match expr {
        Expr::Array(ExprArray { elems, .. }) => elems
            .iter()
            .map(|e| lit_str(e, "a topic"))
            .collect::<syn::Result<Vec<_>>>()?,
        other => vec![lit_str(other, "`topic` (or an array of them)")?],
    };
    if list.is_empty() {
        return Err(syn::Error::new_spanned(
            expr,
            "`topic` needs at least one topic",
        ));
    }
    for t in &list {
        if t.value().is_empty() {
            return Err(syn::Error::new_spanned(t, "a topic cannot be empty"));
        }
    }
    Ok(list)
}

fn dead_letter(expr: &Expr) -> syn::Result<DeadLetter> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(if b.value {
            DeadLetter::Default
        } else {
            DeadLetter::Disabled
        }),
        other => Ok(DeadLetter::Topic(lit_str(
            other,
            "`dead_letter` (a destination name, or `false`)",
        )?)),
    }
}

fn dedup(expr: &Expr) -> syn::Result<Dedup> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) if b.value => Ok(Dedup::MessageId),
        Expr::Call(ExprCall { func, args, .. })
            if matches!(&**func, Expr::Path(p) if p.path.is_ident("header")) =>
        {
            match args.iter().collect::<Vec<_>>().as_slice() {
                [one] => Ok(Dedup::Header(lit_str(one, "the header name")?)),
                _ => Err(syn::Error::new_spanned(
                    args,
                    "`header(...)` takes one header name",
                )),
            }
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(Dedup::Field(s.clone())),
        Expr::Path(path) => Ok(Dedup::Function(path.clone())),
        other => Err(syn::Error::new_spanned(
            other,
            "expected `true` (the message id), a payload field name like \"order_id\", `header(\"x-request-id\")`, or a function `fn(&Message) -> Option<String>` for `dedup`",
        )),
    }
}

fn retry(list: &syn::MetaList, errors: &mut Errors) -> Retry {
    let mut r = Retry::default();
    let metas = match list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated) {
        Ok(m) => m,
        Err(e) => {
            errors.push(e);
            return r;
        }
    };
    for meta in &metas {
        let path = meta.path();
        let key = key_of(path);
        let result = (|| -> syn::Result<bool> {
            let v = name_value(meta)?;
            let fresh = match key.as_str() {
                "max_attempts" => r
                    .max_attempts
                    .replace(positive(
                        lit_int(v, "`max_attempts`")?,
                        v,
                        "`max_attempts`",
                    )?)
                    .is_none(),
                "backoff" => r
                    .backoff
                    .replace(choice(v, "`backoff`", &["exponential", "fixed"])?)
                    .is_none(),
                "initial" => r.initial.replace(duration_ms(v, "`initial`")?).is_none(),
                "max" => r.max.replace(duration_ms(v, "`max`")?).is_none(),
                "jitter" => r.jitter.replace(lit_bool(v, "`jitter`")?).is_none(),
                "mode" => r
                    .mode
                    .replace(choice(v, "`mode`", &["in_process", "redeliver"])?)
                    .is_none(),
                _ => return Err(unknown(path, RETRY_ARGUMENTS, "retry argument")),
            };
            Ok(fresh)
        })();
        match result {
            Ok(true) => {}
            Ok(false) => errors.push(repeated(path)),
            Err(e) => errors.push(e),
        }
    }
    r
}

impl Args {
    /// Parses the attribute's arguments; `span` is where to point when `topic` is missing.
    pub fn parse(metas: Punctuated<Meta, Token![,]>, span: Span) -> syn::Result<Self> {
        let mut args = Args::default();
        let mut errors = Errors::default();
        let mut seen: Vec<String> = Vec::new();
        for meta in &metas {
            let path = meta.path();
            let key = key_of(path);
            if !ARGUMENTS.contains(&key.as_str()) {
                errors.push(unknown(path, ARGUMENTS, "argument"));
                continue;
            }
            if seen.contains(&key) {
                errors.push(repeated(path));
                continue;
            }
            seen.push(key.clone());
            let result = (|| -> syn::Result<()> {
                if key == "retry" {
                    return match meta {
                        Meta::List(list) => {
                            args.retry = Some(retry(list, &mut errors));
                            Ok(())
                        }
                        Meta::Path(_) => {
                            args.retry = Some(Retry::default());
                            Ok(())
                        }
                        Meta::NameValue(nv) => Err(syn::Error::new_spanned(
                            &nv.value,
                            "`retry` takes a list: `retry(max_attempts = 5, initial = \"100ms\")`",
                        )),
                    };
                }
                let v = name_value(meta)?;
                match key.as_str() {
                    "topic" => args.topics = topics(v)?,
                    "group" => {
                        let g = lit_str(v, "`group`")?;
                        if g.value().is_empty() {
                            return Err(syn::Error::new_spanned(&g, "`group` cannot be empty"));
                        }
                        args.group = Some(g);
                    }
                    "codec" => args.codec = Some(choice(v, "`codec`", &["json", "raw"])?),
                    "concurrency" => {
                        args.concurrency =
                            Some(positive(lit_int(v, "`concurrency`")?, v, "`concurrency`")?)
                    }
                    "ordering" => {
                        args.ordering =
                            Some(choice(v, "`ordering`", &["partition", "key", "none"])?)
                    }
                    "partitions" => {
                        args.partitions =
                            Some(positive(lit_int(v, "`partitions`")?, v, "`partitions`")?)
                    }
                    "dead_letter" => args.dead_letter = Some(dead_letter(v)?),
                    "dedup" => args.dedup = Some(dedup(v)?),
                    _ => unreachable!("every key in ARGUMENTS is matched"),
                }
                Ok(())
            })();
            if let Err(e) = result {
                errors.push(e);
            }
        }
        if args.topics.is_empty() && !seen.iter().any(|k| k == "topic") {
            let message =
                "`#[subscriber]` needs a topic: `#[subscriber(topic = \"orders.created\")]`";
            // Underline every argument: `span` would be only the first one, and reads as if that
            // argument were the mistake.
            errors.push(if metas.is_empty() {
                syn::Error::new(span, message)
            } else {
                syn::Error::new_spanned(&metas, message)
            });
        }
        errors.finish()?;
        Ok(args)
    }
}

/// Span of the whole attribute argument list, or the call site when it is empty.
pub fn args_span(tokens: &proc_macro2::TokenStream) -> Span {
    if tokens.is_empty() {
        Span::call_site()
    } else {
        tokens.span()
    }
}
