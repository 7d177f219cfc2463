//! The `#[subscriber]` attribute of anybus. Use it through `anybus::subscriber`; the anybus
//! crate documents the arguments.
//!
//! The macro only turns arguments into a call of `anybus::Subscription::builder` and places
//! compile-time checks on the handler's argument and return types, spanned so that an error
//! points at the type at fault. All behaviour lives in the runtime.

mod args;

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as Tokens};
use quote::{format_ident, quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::{FnArg, ItemFn, Meta, ReturnType, Token};

use crate::args::{Args, DeadLetter, Dedup, Errors};

/// Turns an `async fn` into an anybus subscription, leaving the function as it is.
///
/// Next to the function it defines a type of the same name whose `subscription()` returns the
/// `anybus::Subscription`: `App::builder().subscribe(my_handler::subscription())`.
///
/// Every argument but `topic` is optional; the defaults are what a subscription gets without
/// asking, the same as with [`Subscription::builder`] (whose default group is the subscription's name):
///
/// | argument | values | default |
/// |---|---|---|
/// | `topic` | `"t"` or `["a", "b"]` (RabbitMQ also `*`/`#` patterns) | required |
/// | `group` | the consumer group: each group gets every message, its members share them | the function's module path and name, with dots: `my_crate.orders.reserve_stock`, so that two services' `fn handle` never share a group; name it in production, since moving the function changes the default |
/// | `codec` | `"json"`, `"raw"` | `"json"` |
/// | `concurrency` | handlers at once, `N` ≥ 1 | `16` |
/// | `ordering` | `"partition"` (one at a time per partition), `"key"` (one at a time per key, up to `concurrency` keys at once), `"none"` | `"partition"` |
/// | `partitions` | partitions of the topics anybus creates | the broker URL's `partitions=` option (4 unless told) |
/// | `retry(max_attempts = N)` | attempts in all, first included, ≥ 1 | `3` |
/// | `retry(backoff = …)` | `"exponential"` (doubling), `"fixed"` | `"exponential"` |
/// | `retry(initial = "100ms")` | the first wait (`ms`, `s`, `m`) | `"100ms"` |
/// | `retry(max = "30s")` | the longest wait | `"30s"` |
/// | `retry(jitter = true)` | adds a random part of up to the wait itself (so a 100 ms wait is 100–200 ms), so that failures do not retry in lockstep | `true` |
/// | `retry(mode = …)` | `"in_process"` (the handler's slot waits), `"redeliver"` (a retry copy waits on the group's retry topic, holding no slot) | `"in_process"` |
/// | `dead_letter` | `"name"`, or `false` (log and skip) | `"{topic}.dlq"` |
/// | `dedup` | `true` (the message id), `"field"` / `"path.to.field"` (of a JSON payload), `header("name")`, or a `fn(&Message) -> Option<String>` | off |
///
/// Without `retry(...)` a subscription has all the retry defaults above: 3 attempts in process,
/// 100 ms then 200 ms apart (plus jitter), then the dead letter with reason
/// `attempts-exhausted`. Naming one `retry` argument keeps the defaults of the others.
///
/// [`Subscription::builder`]: https://docs.rs/anybus/latest/anybus/struct.Subscription.html#method.builder
#[proc_macro_attribute]
pub fn subscriber(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = Tokens::from(args);
    let span = args::args_span(&args);
    let function = match syn::parse::<ItemFn>(item.clone()) {
        Ok(f) => f,
        Err(e) => {
            let mut out = e.to_compile_error();
            out.extend(Tokens::from(item));
            return out.into();
        }
    };
    let parsed = syn::parse::Parser::parse2(Punctuated::<Meta, Token![,]>::parse_terminated, args)
        .and_then(|metas| Args::parse(metas, span));
    match (parsed, check_signature(&function)) {
        (Ok(args), Ok(())) => expand(&args, &function),
        (parsed, signature) => {
            let mut errors = Errors::default();
            if let Err(e) = parsed {
                errors.push(e);
            }
            if let Err(e) = signature {
                errors.push(e);
            }
            let error = errors.finish().err().map(|e| e.to_compile_error());
            // Keep the function so that its uses elsewhere don't add errors of their own.
            quote!(#error #function)
        }
    }
    .into()
}

fn check_signature(f: &ItemFn) -> syn::Result<()> {
    let sig = &f.sig;
    let mut errors = Errors::default();
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            "`#[subscriber]` needs an `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            "a subscriber cannot be generic: the payload and extractor types must be known",
        ));
    }
    if let Some(receiver) = sig.receiver() {
        errors.push(syn::Error::new_spanned(
            receiver,
            "a subscriber is a free function, not a method",
        ));
    }
    for arg in &sig.inputs {
        if let FnArg::Typed(arg) = arg {
            if let Some(apit) = impl_trait(&arg.ty) {
                errors.push(syn::Error::new_spanned(
                    apit,
                    "a subscriber cannot be generic: name the payload or extractor type instead of `impl Trait`",
                ));
            }
        }
    }
    if let ReturnType::Type(_, ty) = &sig.output {
        if let Some(rpit) = impl_trait(ty) {
            errors.push(syn::Error::new_spanned(
                rpit,
                "name the return type of a subscriber instead of using `impl Trait`",
            ));
        }
    }
    if let Some(extra) = sig.inputs.iter().nth(MAX_EXTRACTORS + 1) {
        errors.push(syn::Error::new_spanned(
            extra,
            format!("a subscriber takes at most {MAX_EXTRACTORS} extractors after the payload"),
        ));
    }
    if sig.inputs.is_empty() {
        errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            "a subscriber needs the payload as its first argument, e.g. `event: OrderCreated`",
        ));
    }
    errors.finish()
}

/// As many extractors as `anybus::handler::IntoHandler` is implemented for.
const MAX_EXTRACTORS: usize = 6;

/// The first `impl Trait` in `ty`, which would make the handler generic.
fn impl_trait(ty: &syn::Type) -> Option<&syn::TypeImplTrait> {
    use syn::{GenericArgument, PathArguments, Type};
    match ty {
        Type::ImplTrait(t) => Some(t),
        Type::Array(t) => impl_trait(&t.elem),
        Type::Group(t) => impl_trait(&t.elem),
        Type::Paren(t) => impl_trait(&t.elem),
        Type::Ptr(t) => impl_trait(&t.elem),
        Type::Reference(t) => impl_trait(&t.elem),
        Type::Slice(t) => impl_trait(&t.elem),
        Type::Tuple(t) => t.elems.iter().find_map(impl_trait),
        Type::Path(t) => t
            .qself
            .iter()
            .map(|q| &*q.ty)
            .find_map(impl_trait)
            .or_else(|| {
                t.path.segments.iter().find_map(|s| match &s.arguments {
                    PathArguments::AngleBracketed(a) => a.args.iter().find_map(|a| match a {
                        GenericArgument::Type(t) => impl_trait(t),
                        _ => None,
                    }),
                    _ => None,
                })
            }),
        _ => None,
    }
}

fn expand(args: &Args, f: &ItemFn) -> Tokens {
    let vis = &f.vis;
    let name = &f.sig.ident;
    let name_str = name.to_string();
    let codec = match args.codec.unwrap_or("json") {
        "raw" => quote!(::anybus::codec::Raw),
        _ => quote!(::anybus::codec::Json),
    };

    let types: Vec<&syn::Type> = f
        .sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            FnArg::Typed(t) => Some(&*t.ty),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let (payload, extractors) = types
        .split_first()
        .expect("check_signature rejects a handler without arguments");
    let xs: Vec<syn::Ident> = (1..=extractors.len())
        .map(|i| format_ident!("X{i}"))
        .collect();
    let output = match &f.sig.output {
        ReturnType::Type(_, ty) => quote!(#ty),
        // `()`, spanned so that the error points at the name of the function.
        ReturnType::Default => quote_spanned!(f.sig.ident.span()=> ()),
    };
    // The future, spanned so that "future cannot be sent between threads safely" points at
    // the name of the function.
    let future = quote_spanned!(f.sig.ident.span()=> _);
    let handler = syn::Ident::new("handler", Span::mixed_site());

    let topics = &args.topics;
    let mut options = Tokens::new();
    match &args.group {
        Some(group) => options.extend(quote!(.group(#group))),
        // The module path makes the default group unique to the crate and module: two services
        // that each have an `fn handle` do not share a group (and split each other's messages).
        // Dots rather than `::`, which a Kafka topic name (a group's retry topic) cannot hold.
        None => options.extend(quote!(.group(::std::format!(
            "{}.{}",
            ::core::module_path!().replace("::", "."),
            #name_str
        )))),
    }
    if let Some(n) = args.concurrency {
        options.extend(quote!(.concurrency(#n)));
    }
    if let Some(ordering) = args.ordering {
        let variant = match ordering {
            "key" => quote!(Key),
            "none" => quote!(None),
            _ => quote!(Partition),
        };
        options.extend(quote!(.ordering(::anybus::Ordering::#variant)));
    }
    if let Some(n) = args.partitions {
        options.extend(quote!(.partitions(#n)));
    }
    if let Some(r) = &args.retry {
        let mut fields = Tokens::new();
        if let Some(n) = r.max_attempts {
            fields.extend(quote!(max_attempts: #n,));
        }
        if let Some(b) = r.backoff {
            let b = if b == "fixed" {
                quote!(Fixed)
            } else {
                quote!(Exponential)
            };
            fields.extend(quote!(backoff: ::anybus::Backoff::#b,));
        }
        if let Some(ms) = r.initial {
            fields.extend(quote!(initial: ::std::time::Duration::from_millis(#ms),));
        }
        if let Some(ms) = r.max {
            fields.extend(quote!(max: ::std::time::Duration::from_millis(#ms),));
        }
        if let Some(j) = r.jitter {
            fields.extend(quote!(jitter: #j,));
        }
        if let Some(m) = r.mode {
            let m = if m == "redeliver" {
                quote!(Redeliver)
            } else {
                quote!(InProcess)
            };
            fields.extend(quote!(mode: ::anybus::RetryMode::#m,));
        }
        options.extend(quote!(.retry(::anybus::RetrySpec {
            #fields
            ..::core::default::Default::default()
        })));
    }
    if let Some(d) = &args.dead_letter {
        options.extend(match d {
            DeadLetter::Default => quote!(.dead_letter(::anybus::DeadLetter::Default)),
            DeadLetter::Disabled => quote!(.dead_letter(::anybus::DeadLetter::Disabled)),
            DeadLetter::Topic(t) => {
                quote!(.dead_letter(::anybus::DeadLetter::Topic(::std::string::String::from(#t))))
            }
        });
    }
    if let Some(d) = &args.dedup {
        options.extend(match d {
            Dedup::MessageId => quote!(.dedup(::anybus::DedupKey::MessageId)),
            Dedup::Field(f) => {
                quote!(.dedup(::anybus::DedupKey::Field(::std::string::String::from(#f))))
            }
            // Spanned: a function of the wrong signature is reported at the argument.
            Dedup::Function(f) => {
                quote_spanned!(syn::spanned::Spanned::span(f)=> .dedup(::anybus::DedupKey::function(#f)))
            }
            Dedup::Header(h) => {
                quote!(.dedup(::anybus::DedupKey::Header(::std::string::String::from(#h))))
            }
        });
    }

    let type_doc = format!("The anybus subscription of the handler [`{name_str}`](fn@{name_str}).");
    quote! {
        #f

        #[doc = #type_doc]
        #[allow(non_camel_case_types)]
        #vis struct #name {}

        impl #name {
            /// Builds the subscription: topics, group and options as the attribute says, with
            /// this handler.
            #[allow(dead_code)]
            #vis fn subscription() -> ::anybus::Subscription {
                // Named out here, where the helper below cannot shadow it; `#handler` has
                // mixed-site hygiene, so it cannot shadow the user's names either.
                let #handler = #name;
                {
                    // The handler goes through a function whose bounds are the requirements on
                    // each of its types, given in the turbofish with the user's spans: an unmet
                    // one is reported once, on the type at fault, with the trait's own message
                    // (rather than as a function that does not implement `IntoHandler`).
                    fn subscriber<F, Fut, P, #(#xs,)* O>(
                        builder: ::anybus::SubscriptionBuilder<#codec>,
                        handler: F,
                    ) -> ::anybus::Subscription
                    where
                        F: ::core::ops::Fn(P, #(#xs),*) -> Fut
                            + ::core::marker::Send
                            + ::core::marker::Sync
                            + 'static,
                        Fut: ::core::future::Future<Output = O> + ::core::marker::Send + 'static,
                        P: ::anybus::handler::Payload<#codec>,
                        #(#xs: ::anybus::handler::FromContext,)*
                        O: ::anybus::handler::IntoOutcome,
                    {
                        builder.handler(handler)
                    }
                    subscriber::<_, #future, #payload, #(#extractors,)* #output>(
                        ::anybus::Subscription::builder([#(#topics),*])
                            .name(#name_str)
                            .codec::<#codec>()
                            #options,
                        #handler,
                    )
                }
            }
        }
    }
}
