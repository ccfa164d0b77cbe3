//! Parsing and validating the annotated trait. Every problem found is
//! reported, each spanned on the offending item, before giving up.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemTrait, LitStr, Pat, PathArguments, ReturnType,
    TraitItem, TraitItemFn, Type,
};

/// Method names the generated client cannot take, and why. Everything else
/// is free: the per-call options (`timeout`, `version`, …) live on
/// `warren::rpc::Stub`, which the client derefs to, so a method of the same
/// name merely hides one on the client (it stays reachable as
/// `Stub::timeout(&client, ..)`).
const RESERVED: &[(&str, &str)] = &[
    ("new", "`<Trait>Client::new(&connection)` makes the client"),
    ("clone", "`client.clone()` must clone the client"),
    (
        "call",
        "`client.call(request)` is the client's generic path (`Stub::call`, `tower::Service::call`)",
    ),
];

/// The `#[service(...)]` arguments.
pub struct Config {
    pub topic: LitStr,
    pub version: LitStr,
    pub namespace: Option<LitStr>,
    pub exchange: Option<LitStr>,
    pub derives: Vec<syn::Path>,
}

/// What a method returns.
pub enum Output {
    /// `T`: a call.
    Value(Box<Type>),
    /// `Result<T, E>`: a call whose `E` travels typed.
    Fallible(Box<Type>, Box<Type>),
    /// A `#[cast]`: nothing.
    Cast,
}

pub struct Arg {
    pub name: Ident,
    pub ty: Type,
}

pub struct Method {
    pub attrs: Vec<Attribute>,
    pub name: Ident,
    /// The name on the wire (oslo's `method`): `name` without `r#`.
    pub wire: String,
    pub args: Vec<Arg>,
    pub output: Output,
}

pub struct Service {
    pub config: Config,
    pub item: ItemTrait,
    pub methods: Vec<Method>,
}

/// Collects errors so all of them are reported at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        let error = syn::Error::new(span, message);
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

impl Service {
    pub fn parse(attr: TokenStream, item: TokenStream) -> Result<Self, syn::Error> {
        let item: ItemTrait = syn::parse2(item)?;
        let mut errors = Errors::default();
        let config = parse_config(attr, &mut errors);
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            errors.push(
                item.generics.span(),
                "a warren service trait cannot be generic",
            );
        }
        let mut methods = Vec::new();
        for trait_item in &item.items {
            match trait_item {
                TraitItem::Fn(f) => {
                    if let Some(method) = parse_method(f, &mut errors) {
                        methods.push(method);
                    }
                }
                other => errors.push(
                    other.span(),
                    "a warren service trait can only contain `async fn` methods",
                ),
            }
        }
        for (i, method) in methods.iter().enumerate() {
            let v = crate::emit::variant(&method.name);
            if let Some(first) = methods[..i]
                .iter()
                .find(|m| crate::emit::variant(&m.name) == v)
            {
                errors.push(
                    method.name.span(),
                    format!(
                        "`{}` and `{}` would both be the request variant `{v}`: rename one",
                        first.name, method.name
                    ),
                );
            }
        }
        errors.finish()?;
        let config = config
            .ok_or_else(|| syn::Error::new(Span::call_site(), "invalid service attributes"))?;
        Ok(Service {
            config,
            item,
            methods,
        })
    }
}

fn parse_config(attr: TokenStream, errors: &mut Errors) -> Option<Config> {
    let mut topic = None;
    let mut version = None;
    let mut namespace = None;
    let mut exchange = None;
    let mut derives = Vec::new();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("topic") {
            topic = Some(meta.value()?.parse::<LitStr>()?);
        } else if meta.path.is_ident("version") {
            let lit: LitStr = meta.value()?.parse()?;
            if !valid_version(&lit.value()) {
                return Err(syn::Error::new(
                    lit.span(),
                    "version must be `major.minor`, e.g. \"1.0\"",
                ));
            }
            version = Some(lit);
        } else if meta.path.is_ident("namespace") {
            namespace = Some(meta.value()?.parse::<LitStr>()?);
        } else if meta.path.is_ident("exchange") {
            exchange = Some(meta.value()?.parse::<LitStr>()?);
        } else if meta.path.is_ident("derive") {
            meta.parse_nested_meta(|nested| {
                let last = nested.path.segments.last().map(|s| s.ident.to_string());
                if let Some(serde @ ("Serialize" | "Deserialize")) = last.as_deref() {
                    return Err(syn::Error::new_spanned(
                        &nested.path,
                        format!("the request enum already derives serde's `{serde}` (its variants are the methods' arguments on the wire)"),
                    ));
                }
                derives.push(nested.path);
                Ok(())
            })?;
        } else {
            return Err(meta.error(
                "unknown service attribute; expected `topic`, `version`, `namespace`, `exchange` or `derive(...)`",
            ));
        }
        Ok(())
    });
    if let Err(e) = syn::parse::Parser::parse2(parser, attr) {
        errors.push(e.span(), e);
        return None;
    }
    if let Some(t) = &topic {
        if t.value().is_empty() {
            errors.push(t.span(), "topic cannot be empty");
        }
    }
    match (topic, version) {
        (Some(topic), Some(version)) => Some(Config {
            topic,
            version,
            namespace,
            exchange,
            derives,
        }),
        (topic, version) => {
            let missing = match (topic.is_none(), version.is_none()) {
                (true, true) => "`topic` and `version`",
                (true, false) => "`topic`",
                _ => "`version`",
            };
            errors.push(
                Span::call_site(),
                format!("#[warren::service] needs {missing}, e.g. #[warren::service(topic = \"engine\", version = \"1.0\")]"),
            );
            None
        }
    }
}

fn valid_version(v: &str) -> bool {
    match v.split_once('.') {
        Some((major, minor)) => major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok(),
        None => false,
    }
}

fn is_cast_attr(attr: &Attribute) -> bool {
    attr.path().is_ident("cast")
}

fn parse_method(f: &TraitItemFn, errors: &mut Errors) -> Option<Method> {
    let sig = &f.sig;
    let name = sig.ident.clone();
    let before = errors.0.is_some();
    let name_str = name.unraw().to_string();
    if name_str.starts_with('_') {
        errors.push(
            name.span(),
            format!("`{name_str}`: methods whose names start with `_` are never dispatched (oslo.messaging rule)"),
        );
    } else if let Some((_, why)) = RESERVED.iter().find(|(n, _)| *n == name_str) {
        errors.push(name.span(), format!("`{name_str}` is reserved: {why}"));
    }
    if sig.asyncness.is_none() {
        errors.push(
            sig.fn_token.span(),
            "warren service methods must be `async fn`",
        );
    }
    if let Some(c) = &sig.constness {
        errors.push(c.span(), "warren service methods cannot be `const`");
    }
    if let Some(u) = &sig.unsafety {
        errors.push(u.span(), "warren service methods cannot be `unsafe`");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(
            sig.generics.span(),
            "warren service methods cannot be generic",
        );
    }
    if let Some(v) = &sig.variadic {
        errors.push(v.span(), "warren service methods cannot be variadic");
    }
    if let Some(body) = &f.default {
        errors.push(
            body.span(),
            "warren service methods cannot have a default body",
        );
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
        Some(FnArg::Receiver(r)) => errors.push(
            r.span(),
            "warren service methods take `&self` (the implementation is shared between concurrent requests)",
        ),
        _ => errors.push(sig.ident.span(), "warren service methods take `&self` as their first argument"),
    }
    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(typed) = input else { continue };
        match &*typed.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => {
                if p.ident.to_string().starts_with("__warren") {
                    errors.push(
                        p.ident.span(),
                        "argument names starting with `__warren` are reserved",
                    );
                }
                args.push(Arg {
                    name: p.ident.clone(),
                    ty: (*typed.ty).clone(),
                });
            }
            other => errors.push(
                other.span(),
                "arguments must be plain names (they travel as a map of parameter name to value)",
            ),
        }
        if let Type::ImplTrait(t) = &*typed.ty {
            errors.push(
                t.span(),
                "arguments cannot be `impl Trait`: they must be concrete serializable types",
            );
        }
        if let Type::Reference(t) = &*typed.ty {
            errors.push(
                t.span(),
                "arguments must be owned types (they are deserialized on the server)",
            );
        }
    }
    let cast = f.attrs.iter().any(is_cast_attr);
    let output = match (&sig.output, cast) {
        (ReturnType::Default, true) => Output::Cast,
        (ReturnType::Type(_, ty), true) if is_unit(ty) => Output::Cast,
        (ReturnType::Type(_, ty), true) => {
            errors.push(
                ty.span(),
                "a #[cast] method cannot return a value: casts get no reply",
            );
            Output::Cast
        }
        (ReturnType::Default, false) => Output::Value(Box::new(syn::parse_quote!(()))),
        (ReturnType::Type(_, ty), false) => match result_types(ty) {
            Some((ok, err)) => Output::Fallible(Box::new(ok), Box::new(err)),
            None => Output::Value(ty.clone()),
        },
    };
    if errors.0.is_some() && !before {
        return None;
    }
    let attrs = f
        .attrs
        .iter()
        .filter(|a| !is_cast_attr(a))
        .cloned()
        .collect();
    Some(Method {
        attrs,
        name,
        wire: name_str,
        args,
        output,
    })
}

fn is_unit(ty: &Type) -> bool {
    matches!(ty, Type::Tuple(t) if t.elems.is_empty())
}

/// `Result<T, E>` (by its last path segment) → `(T, E)`.
fn result_types(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let ok = types.next()?;
    let err = types.next()?;
    types.next().is_none().then_some((ok, err))
}
