//! The `#[warren::service]` attribute macro.
//!
//! It turns an annotated trait into a request enum (`<Trait>Request`, one
//! variant per method with the arguments as fields: what travels and what
//! the server dispatches), a response enum (`<Trait>Response`), a typed
//! client (`<Trait>Client`, a thin newtype over `warren::rpc::Stub`, which
//! holds the per-call options and the one call path, also its
//! `tower::Service`) and a server dispatcher (`<Trait>Server`). This crate
//! only parses, validates and emits: everything the generated code calls is
//! public API of the `warren` crate. Use it through `warren::service`.
//! `snapshots/greeter.rs` is the expansion of a small service.

extern crate proc_macro;

mod emit;
mod parse;
#[cfg(test)]
mod snapshot;

use proc_macro::TokenStream;

/// Turns a trait into a warren RPC service.
///
/// ```ignore
/// #[warren::service(topic = "engine", version = "1.35", exchange = "heat")]
/// pub trait Engine {
///     async fn health_check(&self, seqid: u64, host: String, req: String) -> (u64, String, String);
///     async fn create_stack(&self, name: String) -> Result<StackId, EngineError>;
///     #[cast]
///     async fn stack_deleted(&self, id: StackId);
/// }
/// ```
///
/// Attributes: `topic` and `version` (required), `namespace`, `exchange`,
/// and `derive(...)` for the generated request enum (which derives serde's
/// traits itself). Method names `new`, `clone` and `call` are reserved for
/// the client; any other name is free.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    match parse::Service::parse(attr.into(), item.into()) {
        Ok(service) => emit::emit(&service).into(),
        Err(errors) => errors.to_compile_error().into(),
    }
}
