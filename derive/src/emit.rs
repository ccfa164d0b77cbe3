//! Code emission: the trait (with `Send` futures), the request enum (the
//! wire form of every method: it implements `warren::rpc::ServiceRequest`),
//! the response enum, the client (a newtype over `warren::rpc::Stub`, whose
//! typed methods only build a request) and the server dispatcher. Every call
//! goes into `warren`'s public API; `derive/snapshots/` shows the output.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, ToTokens};
use syn::ext::IdentExt;
use syn::{Ident, LitStr, TraitItem};

use crate::parse::{Method, Output, Service};

pub fn emit(service: &Service) -> TokenStream {
    let names = Names::new(&service.item.ident);
    let tokens = [
        emit_trait(service),
        emit_request(service, &names),
        emit_response(service, &names),
        emit_client(service, &names),
        emit_server(service, &names),
    ];
    quote!(#(#tokens)*)
}

struct Names {
    trait_name: Ident,
    client: Ident,
    server: Ident,
    request: Ident,
    response: Ident,
}

impl Names {
    fn new(trait_name: &Ident) -> Self {
        Names {
            trait_name: trait_name.clone(),
            client: format_ident!("{}Client", trait_name),
            server: format_ident!("{}Server", trait_name),
            request: format_ident!("{}Request", trait_name),
            response: format_ident!("{}Response", trait_name),
        }
    }
}

/// `health_check` → `HealthCheck` (and `r#type` → `Type`).
pub fn variant(name: &Ident) -> Ident {
    let pascal: String = name
        .unraw()
        .to_string()
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect();
    Ident::new(&pascal, name.span())
}

/// The value a method's future resolves to, as the trait declares it.
fn output_type(method: &Method) -> TokenStream {
    match &method.output {
        Output::Value(t) => t.to_token_stream(),
        Output::Fallible(t, e) => quote!(::core::result::Result<#t, #e>),
        Output::Cast => quote!(()),
    }
}

fn emit_trait(service: &Service) -> TokenStream {
    let mut item = service.item.clone();
    item.supertraits
        .push(syn::parse_quote!(::core::marker::Send));
    item.supertraits
        .push(syn::parse_quote!(::core::marker::Sync));
    item.supertraits.push(syn::parse_quote!('static));
    let mut methods = service.methods.iter();
    for trait_item in &mut item.items {
        let TraitItem::Fn(f) = trait_item else {
            continue;
        };
        let Some(method) = methods.next() else { break };
        let output = output_type(method);
        f.attrs.retain(|a| !a.path().is_ident("cast"));
        f.sig.asyncness = None;
        f.sig.output = syn::parse_quote!(
            -> impl ::core::future::Future<Output = #output> + ::core::marker::Send
        );
    }
    item.to_token_stream()
}

fn lit_option(value: &Option<LitStr>) -> TokenStream {
    match value {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    }
}

fn emit_request(service: &Service, names: &Names) -> TokenStream {
    let vis = &service.item.vis;
    let (request, response, client, trait_name) = (
        &names.request,
        &names.response,
        &names.client,
        &names.trait_name,
    );
    let derives = &service.config.derives;
    let derive = (!derives.is_empty()).then(|| quote!(#[derive(#(#derives),*)]));
    let variants = service.methods.iter().map(|m| {
        let v = variant(&m.name);
        let method = &m.wire;
        let doc = format!(" A request for [`{trait_name}::{}`].", m.name);
        let fields = m.args.iter().map(|a| {
            let (name, ty) = (&a.name, &a.ty);
            quote!(#name: #ty)
        });
        quote!(#[doc = #doc] #[serde(rename = #method)] #v { #(#fields),* })
    });
    let doc = format!(
        " A request to any method of [`{trait_name}`]: the method's arguments as fields. \
         What the client sends and the server dispatches, and the `tower::Service` request."
    );
    let config = &service.config;
    let name = trait_name.to_string();
    let (topic, version) = (&config.topic, &config.version);
    let exchange = lit_option(&config.exchange);
    let namespace = lit_option(&config.namespace);
    let method_names = service.methods.iter().map(|m| &m.wire);
    let arms = service.methods.iter().map(|m| {
        let v = variant(&m.name);
        let method = &m.wire;
        let kind = match &m.output {
            Output::Value(_) => quote! {
                call(#method, |reply| reply.value().map(#response::#v))
            },
            Output::Fallible(..) => quote! {
                call(#method, |reply| reply.fallible().map(#response::#v))
            },
            Output::Cast => quote!(cast(#method, #response::#v)),
        };
        quote!(Self::#v { .. } => ::warren::rpc::Method::#kind)
    });
    quote! {
        #[doc = #doc]
        #derive
        #[derive(::warren::__private::serde::Serialize, ::warren::__private::serde::Deserialize)]
        #[serde(crate = "::warren::__private::serde")]
        #[allow(dead_code, missing_docs)]
        #vis enum #request { #(#variants),* }

        impl ::warren::rpc::ServiceRequest for #request {
            type Response = #response;
            type Client = #client;

            const INFO: &'static ::warren::rpc::ServiceInfo = &::warren::rpc::ServiceInfo {
                name: #name,
                topic: #topic,
                exchange: #exchange,
                version: #version,
                namespace: #namespace,
                methods: &[#(#method_names),*],
            };

            fn method(&self) -> ::warren::rpc::Method<#response> {
                match *self { #(#arms),* }
            }
        }
    }
}

fn emit_response(service: &Service, names: &Names) -> TokenStream {
    let vis = &service.item.vis;
    let (request, response, trait_name) = (&names.request, &names.response, &names.trait_name);
    let variants = service.methods.iter().map(|m| {
        let v = variant(&m.name);
        let doc = format!(" The result of [`{trait_name}::{}`].", m.name);
        match &m.output {
            Output::Cast => quote!(#[doc = #doc] #v),
            _ => {
                let ty = output_type(m);
                quote!(#[doc = #doc] #v(#ty))
            }
        }
    });
    let doc = format!(" The response to a [`{request}`].");
    quote! {
        #[doc = #doc]
        #[allow(dead_code)]
        #vis enum #response { #(#variants),* }
    }
}

fn emit_client(service: &Service, names: &Names) -> TokenStream {
    let vis = &service.item.vis;
    let (client, request, response, trait_name) = (
        &names.client,
        &names.request,
        &names.response,
        &names.trait_name,
    );
    let doc = format!(
        " The client of [`{trait_name}`]: one method per service method, each sending a \
         [`{request}`] through `warren::rpc::Stub::call`, the path that also makes it a \
         `tower::Service<{request}>`. It derefs to that `Stub`, whose per-call options \
         (`.to_server()`, `.timeout()`, `.version()`, `.fanout()`, `.context()`, …) return \
         a `{client}` again."
    );
    let stub = quote!(::warren::rpc::Stub<#request>);
    let tower = quote!(::warren::__private::tower::Service);
    let methods = service.methods.iter().map(|m| {
        let attrs = &m.attrs;
        let name = &m.name;
        let method = &m.wire;
        let v = variant(name);
        let params = m.args.iter().map(|a| {
            let (name, ty) = (&a.name, &a.ty);
            quote!(#name: #ty)
        });
        let fields = m.args.iter().map(|a| &a.name);
        let (output, arm) = match &m.output {
            Output::Cast => (quote!(()), quote!(#response::#v => ::core::result::Result::Ok(()))),
            _ => (
                output_type(m),
                quote!(#response::#v(response) => ::core::result::Result::Ok(response)),
            ),
        };
        quote! {
            #(#attrs)*
            pub async fn #name(&self, #(#params),*) -> ::core::result::Result<#output, ::warren::Error> {
                match ::warren::rpc::Stub::call(&self.0, #request::#v { #(#fields),* }).await? {
                    #arm,
                    #[allow(unreachable_patterns)]
                    _ => ::core::result::Result::Err(::warren::rpc::mismatched_response(#method)),
                }
            }
        }
    });
    quote! {
        #[doc = #doc]
        #[derive(Clone, Debug)]
        #vis struct #client(#stub);

        impl #client {
            /// A client on `connection`, addressing the service's topic.
            pub fn new(connection: &::warren::Connection) -> Self {
                #client(::warren::rpc::Stub::new(connection))
            }

            #(#methods)*
        }

        impl ::core::convert::From<#stub> for #client {
            fn from(stub: #stub) -> Self {
                #client(stub)
            }
        }

        impl ::core::ops::Deref for #client {
            type Target = #stub;

            fn deref(&self) -> &#stub {
                &self.0
            }
        }

        impl #tower<#request> for #client {
            type Response = #response;
            type Error = ::warren::Error;
            type Future = <#stub as #tower<#request>>::Future;

            fn poll_ready(
                &mut self,
                cx: &mut ::core::task::Context<'_>,
            ) -> ::core::task::Poll<::core::result::Result<(), ::warren::Error>> {
                #tower::poll_ready(&mut self.0, cx)
            }

            fn call(&mut self, request: #request) -> Self::Future {
                #tower::call(&mut self.0, request)
            }
        }
    }
}

fn emit_server(service: &Service, names: &Names) -> TokenStream {
    let vis = &service.item.vis;
    let (server, request, trait_name) = (&names.server, &names.request, &names.trait_name);
    let doc = format!(
        " The server side of [`{trait_name}`]: wraps an implementation (shared as an `Arc`) and dispatches requests to it by method name."
    );
    let arms = service.methods.iter().map(|m| {
        let name = &m.name;
        let v = variant(name);
        let fields: Vec<&Ident> = m.args.iter().map(|a| &a.name).collect();
        let call = quote!(__warren_service.#name(#(#fields),*).await);
        let respond = match &m.output {
            Output::Fallible(_, e) => quote!({
                let __warren_result = #call;
                #[allow(clippy::needless_borrow)]
                let __warren_class = {
                    #[allow(unused_imports)]
                    use ::warren::rpc::{ViaRemoteException as _, ViaTypeName as _};
                    (&::warren::rpc::ClassOf::<#e>::new()).class_of()
                };
                ::warren::rpc::Response::result_as(__warren_codec, &__warren_result, __warren_class)
            }),
            _ => quote!(::warren::rpc::Response::value(__warren_codec, &#call)),
        };
        quote!(#request::#v { #(#fields),* } => #respond)
    });
    quote! {
        #[doc = #doc]
        #vis struct #server<S> {
            service: ::std::sync::Arc<S>,
        }

        impl<S> ::core::clone::Clone for #server<S> {
            fn clone(&self) -> Self {
                #server { service: ::std::sync::Arc::clone(&self.service) }
            }
        }

        impl<S: #trait_name> #server<S> {
            /// Wraps an implementation.
            pub fn new(service: S) -> Self {
                #server { service: ::std::sync::Arc::new(service) }
            }

            /// Wraps an implementation already behind an `Arc`.
            pub fn from_arc(service: ::std::sync::Arc<S>) -> Self {
                #server { service }
            }

            /// A server builder, for middleware layers, more endpoints or a prefetch count.
            pub fn builder(self) -> ::warren::rpc::ServerBuilder {
                ::warren::rpc::ServerBuilder::new(self)
            }

            /// Declares the service's topology and serves it as `server` until
            /// the handle is shut down or dropped.
            pub async fn serve(
                self,
                connection: &::warren::Connection,
                server: &str,
            ) -> ::core::result::Result<::warren::rpc::ServerHandle, ::warren::Error> {
                self.builder().serve(connection, server).await
            }
        }

        impl<S: #trait_name> ::warren::rpc::Dispatch for #server<S> {
            fn info(&self) -> &'static ::warren::rpc::ServiceInfo {
                <#request as ::warren::rpc::ServiceRequest>::INFO
            }

            fn dispatch(
                &self,
                request: ::warren::rpc::Request,
            ) -> ::warren::__private::BoxFuture<'static, ::warren::rpc::Response> {
                let __warren_codec = request.codec();
                let __warren_request = match <#request as ::warren::rpc::ServiceRequest>::from_request(&request) {
                    ::core::result::Result::Ok(decoded) => decoded,
                    ::core::result::Result::Err(failure) => {
                        return ::std::boxed::Box::pin(::core::future::ready(failure))
                    }
                };
                let __warren_service = ::std::sync::Arc::clone(&self.service);
                ::std::boxed::Box::pin(async move {
                    match __warren_request { #(#arms),* }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use crate::parse::Service;

    #[test]
    fn a_raw_method_name_travels_without_its_prefix() {
        let service = Service::parse(
            quote!(topic = "t", version = "1.0"),
            quote!(
                pub trait T {
                    async fn r#type(&self) -> u32;
                }
            ),
        )
        .unwrap();
        let out = super::emit(&service).to_string();
        assert!(out.contains("\"type\""), "{out}");
        assert!(!out.contains("\"r#type\""), "{out}");
        assert!(out.contains("Type {"), "{out}");
    }
}
