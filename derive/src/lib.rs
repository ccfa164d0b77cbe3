//! The `#[warren::service]` attribute macro.
//!
//! It turns an annotated trait into a typed client stub (`<Trait>Client`), a
//! server dispatcher (`<Trait>Server`), and request/response enums
//! (`<Trait>Request`, `<Trait>Response`) for `tower`. This crate only parses,
//! validates and emits: everything the generated code calls is public API of
//! the `warren` crate. Use it through `warren::service`.

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
/// and `derive(...)` for the generated request enum.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    match parse::Service::parse(attr.into(), item.into()) {
        Ok(service) => emit::emit(&service).into(),
        Err(errors) => errors.to_compile_error().into(),
    }
}
