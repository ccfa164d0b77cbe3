//! The `#[warren::service]` macro.
extern crate proc_macro;
use proc_macro::TokenStream;
/// placeholder
#[proc_macro_attribute]
pub fn service(_a: TokenStream, i: TokenStream) -> TokenStream { i }
