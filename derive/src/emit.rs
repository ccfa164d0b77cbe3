//! Code emission: the trait (with `Send` futures), argument structs, the
//! request and response enums, the client stub and the server dispatcher.
//! Every call goes into `warren`'s public API.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, ToTokens};
use syn::{Ident, LitStr, TraitItem};

use crate::parse::{Method, Output, Service};

pub fn emit(service: &Service) -> TokenStream {
    let names = Names::new(&service.item.ident);
    let tokens = [
        emit_trait(service),
        emit_info(service, &names),
        emit_args(service, &names),
        emit_enums(service, &names),
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
    info: Ident,
}

impl Names {
    fn new(trait_name: &Ident) -> Self {
        Names {
            trait_name: trait_name.clone(),
            client: format_ident!("{}Client", trait_name),
            server: format_ident!("{}Server", trait_name),
            request: format_ident!("{}Request", trait_name),
            response: format_ident!("{}Response", trait_name),
            info: format_ident!("__WARREN_{}_INFO", trait_name.to_string().to_uppercase()),
        }
    }

    fn args(&self, method: &Method) -> Ident {
        format_ident!("__Warren{}{}Args", self.trait_name, variant(&method.name))
    }
}

/// `health_check` → `HealthCheck`.
fn variant(name: &Ident) -> Ident {
    let pascal: String = name
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

fn emit_info(service: &Service, names: &Names) -> TokenStream {
    let info = &names.info;
    let name = names.trait_name.to_string();
    let config = &service.config;
    let (topic, version) = (&config.topic, &config.version);
    let exchange = lit_option(&config.exchange);
    let namespace = lit_option(&config.namespace);
    let methods = service.methods.iter().map(|m| m.name.to_string());
    quote! {
        #[doc(hidden)]
        static #info: ::warren::rpc::ServiceInfo = ::warren::rpc::ServiceInfo {
            name: #name,
            topic: #topic,
            exchange: #exchange,
            version: #version,
            namespace: #namespace,
            methods: &[#(#methods),*],
        };
    }
}

fn emit_args(service: &Service, names: &Names) -> TokenStream {
    let structs = service.methods.iter().map(|method| {
        let ident = names.args(method);
        let fields = method.args.iter().map(|a| {
            let (name, ty) = (&a.name, &a.ty);
            quote!(#name: #ty)
        });
        quote! {
            #[doc(hidden)]
            #[allow(non_camel_case_types, dead_code)]
            #[derive(::warren::__private::serde::Serialize, ::warren::__private::serde::Deserialize)]
            #[serde(crate = "::warren::__private::serde")]
            struct #ident { #(#fields),* }
        }
    });
    quote!(#(#structs)*)
}

fn emit_enums(service: &Service, names: &Names) -> TokenStream {
    let vis = &service.item.vis;
    let (request, response, trait_name) = (&names.request, &names.response, &names.trait_name);
    let derives = &service.config.derives;
    let derive = (!derives.is_empty()).then(|| quote!(#[derive(#(#derives),*)]));
    let requests = service.methods.iter().map(|m| {
        let v = variant(&m.name);
        let doc = format!("A request for [`{trait_name}::{}`].", m.name);
        let fields = m.args.iter().map(|a| {
            let (name, ty) = (&a.name, &a.ty);
            quote!(#[allow(missing_docs)] #name: #ty)
        });
        quote!(#[doc = #doc] #v { #(#fields),* })
    });
    let responses = service.methods.iter().map(|m| {
        let v = variant(&m.name);
        let doc = format!("The result of [`{trait_name}::{}`].", m.name);
        match &m.output {
            Output::Cast => quote!(#[doc = #doc] #v),
            _ => {
                let ty = output_type(m);
                quote!(#[doc = #doc] #v(#ty))
            }
        }
    });
    let request_doc = format!(
        "A request to any method of [`{trait_name}`], for using the client as a `tower::Service`."
    );
    let response_doc = format!("The response to a [`{request}`].");
    quote! {
        #[doc = #request_doc]
        #derive
        #[allow(dead_code)]
        #vis enum #request { #(#requests),* }

        #[doc = #response_doc]
        #[allow(dead_code)]
        #vis enum #response { #(#responses),* }
    }
}

fn emit_client(service: &Service, names: &Names) -> TokenStream {
    let vis = &service.item.vis;
    let (client, request, response, info, trait_name) = (
        &names.client,
        &names.request,
        &names.response,
        &names.info,
        &names.trait_name,
    );
    let doc = format!(
        "The client stub of [`{trait_name}`]: one method per service method, plus per-call options (`.to_server()`, `.timeout()`, `.version()`, `.fanout()`, `.context()`). Also a `tower::Service<{request}>`."
    );
    let methods = service.methods.iter().map(|m| {
        let attrs = &m.attrs;
        let name = &m.name;
        let method = name.to_string();
        let args_ty = names.args(m);
        let params = m.args.iter().map(|a| {
            let (name, ty) = (&a.name, &a.ty);
            quote!(#name: #ty)
        });
        let fields = m.args.iter().map(|a| &a.name);
        let args = quote!(&#args_ty { #(#fields),* });
        match &m.output {
            Output::Value(t) => quote! {
                #(#attrs)*
                pub async fn #name(&self, #(#params),*) -> ::core::result::Result<#t, ::warren::Error> {
                    self.client.call(&self.options, #method, #args).await
                }
            },
            Output::Fallible(t, e) => quote! {
                #(#attrs)*
                pub async fn #name(&self, #(#params),*)
                    -> ::core::result::Result<::core::result::Result<#t, #e>, ::warren::Error>
                {
                    self.client.call_fallible(&self.options, #method, #args).await
                }
            },
            Output::Cast => quote! {
                #(#attrs)*
                pub async fn #name(&self, #(#params),*) -> ::core::result::Result<(), ::warren::Error> {
                    self.client.cast(&self.options, #method, #args).await
                }
            },
        }
    });
    let arms = service.methods.iter().map(|m| {
        let v = variant(&m.name);
        let name = &m.name;
        let fields: Vec<&Ident> = m.args.iter().map(|a| &a.name).collect();
        let map = match &m.output {
            Output::Cast => quote!(.map(|()| #response::#v)),
            _ => quote!(.map(#response::#v)),
        };
        quote!(#request::#v { #(#fields),* } => __warren_client.#name(#(#fields),*).await #map)
    });
    quote! {
        #[doc = #doc]
        #[derive(Clone, Debug)]
        #vis struct #client {
            client: ::warren::rpc::Client,
            options: ::warren::rpc::CallOptions,
        }

        impl #client {
            /// A client on `connection`, addressing the service's topic.
            pub fn new(connection: &::warren::Connection) -> Self {
                Self::from_client(::warren::rpc::Client::new(connection))
            }

            /// A stub over an existing [`warren::rpc::Client`] (sharing its reply queue).
            pub fn from_client(client: ::warren::rpc::Client) -> Self {
                let mut target = ::warren::rpc::Target::new(#info.topic);
                if let ::core::option::Option::Some(exchange) = #info.exchange {
                    target.exchange = exchange.into();
                }
                target.version = ::core::option::Option::Some(#info.version.into());
                target.namespace = #info.namespace.map(::core::convert::Into::into);
                #client { client, options: ::warren::rpc::CallOptions::new(target) }
            }

            /// The options calls from this stub use.
            pub fn options(&self) -> &::warren::rpc::CallOptions {
                &self.options
            }

            fn with_options(&self, options: ::warren::rpc::CallOptions) -> Self {
                #client { client: self.client.clone(), options }
            }

            /// A stub addressing another topic than the service's own.
            pub fn topic(&self, topic: impl ::core::convert::Into<::std::string::String>) -> Self {
                self.with_options(self.options.clone().topic(topic))
            }

            /// A stub using another control exchange than the service's own.
            pub fn exchange(&self, exchange: impl ::core::convert::Into<::std::string::String>) -> Self {
                self.with_options(self.options.clone().exchange(exchange))
            }

            /// A stub addressing one named server (`<topic>.<server>`).
            pub fn to_server(&self, server: impl ::core::convert::Into<::std::string::String>) -> Self {
                self.with_options(self.options.clone().to_server(server))
            }

            /// A stub whose calls wait at most `timeout` for their reply.
            pub fn timeout(&self, timeout: ::std::time::Duration) -> Self {
                self.with_options(self.options.clone().timeout(timeout))
            }

            /// A stub requesting another version (`major.minor`).
            pub fn version(&self, version: impl ::core::convert::Into<::std::string::String>) -> Self {
                self.with_options(self.options.clone().version(version))
            }

            /// A stub addressing an endpoint namespace.
            pub fn namespace(&self, namespace: impl ::core::convert::Into<::std::string::String>) -> Self {
                self.with_options(self.options.clone().namespace(namespace))
            }

            /// A stub whose casts reach every server of the topic (calls refuse it).
            pub fn fanout(&self) -> Self {
                self.with_options(self.options.clone().fanout())
            }

            /// A stub sending `context` with each request.
            pub fn context(&self, context: ::warren::rpc::Context) -> Self {
                self.with_options(self.options.clone().context(context))
            }

            #(#methods)*
        }

        impl ::warren::__private::tower::Service<#request> for #client {
            type Response = #response;
            type Error = ::warren::Error;
            type Future = ::warren::__private::BoxFuture<'static, ::core::result::Result<#response, ::warren::Error>>;

            fn poll_ready(
                &mut self,
                _: &mut ::core::task::Context<'_>,
            ) -> ::core::task::Poll<::core::result::Result<(), ::warren::Error>> {
                ::core::task::Poll::Ready(::core::result::Result::Ok(()))
            }

            fn call(&mut self, __warren_request: #request) -> Self::Future {
                let __warren_client = self.clone();
                ::std::boxed::Box::pin(async move {
                    match __warren_request { #(#arms),* }
                })
            }
        }
    }
}

fn emit_server(service: &Service, names: &Names) -> TokenStream {
    let vis = &service.item.vis;
    let (server, info, trait_name) = (&names.server, &names.info, &names.trait_name);
    let doc = format!(
        "The server side of [`{trait_name}`]: wraps an implementation (shared as an `Arc`) and dispatches requests to it by method name."
    );
    let arms = service.methods.iter().map(|m| {
        let name = &m.name;
        let method = name.to_string();
        let args_ty = names.args(m);
        let fields = m.args.iter().map(|a| {
            let field = &a.name;
            quote!(__warren_args.#field)
        });
        let respond = match &m.output {
            Output::Fallible(_, e) => quote! {
                #[allow(clippy::needless_borrow)]
                let __warren_class = {
                    #[allow(unused_imports)]
                    use ::warren::rpc::{ViaRemoteException as _, ViaTypeName as _};
                    (&::warren::rpc::ClassOf::<#e>::new()).class_of()
                };
                ::warren::rpc::Response::result_as(__warren_codec, &__warren_result, __warren_class)
            },
            _ => quote!(::warren::rpc::Response::value(
                __warren_codec,
                &__warren_result
            )),
        };
        quote! {
            #method => {
                let __warren_args: #args_ty = match __warren_request.args.decode() {
                    ::core::result::Result::Ok(args) => args,
                    ::core::result::Result::Err(error) => {
                        return ::std::boxed::Box::pin(::core::future::ready(
                            ::warren::rpc::Response::decode_error(error),
                        ))
                    }
                };
                let __warren_service = ::std::sync::Arc::clone(&self.service);
                ::std::boxed::Box::pin(async move {
                    let __warren_result = __warren_service.#name(#(#fields),*).await;
                    #respond
                })
            }
        }
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
                &#info
            }

            fn dispatch(
                &self,
                __warren_request: ::warren::rpc::Request,
            ) -> ::warren::__private::BoxFuture<'static, ::warren::rpc::Response> {
                let __warren_codec = __warren_request.codec();
                match __warren_request.method.as_str() {
                    #(#arms)*
                    __warren_other => ::std::boxed::Box::pin(::core::future::ready(
                        ::warren::rpc::Response::failure(::warren::wire::Failure::no_such_method(__warren_other)),
                    )),
                }
            }
        }
    }
}
