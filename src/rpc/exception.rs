//! How a service's own error type presents itself to oslo.messaging peers.
//!
//! A Python client rebuilds builtin exceptions (module `builtins`) as
//! themselves and wraps anything else in `RemoteError`. An error type that
//! implements [`RemoteException`] names its Python class; one that does not
//! is reported under its Rust type name.

use std::marker::PhantomData;

/// Names the Python exception a service error stands for.
///
/// ```
/// #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// struct BadValue(String);
///
/// impl warren::rpc::RemoteException for BadValue {
///     const CLASS: &'static str = "ValueError";
/// }
/// ```
pub trait RemoteException {
    /// The exception class, e.g. `ValueError`.
    const CLASS: &'static str;
    /// Its module; `builtins` (the default) makes Python raise the class
    /// itself.
    const MODULE: &'static str = "builtins";
}

/// `my_crate::errors::EngineError` → (`my_crate.errors`, `EngineError`), the
/// way oslo names an exception's module and class.
pub(crate) fn type_path<E: ?Sized>() -> (String, String) {
    let full = std::any::type_name::<E>();
    let base = full.split('<').next().unwrap_or(full);
    match base.rsplit_once("::") {
        Some((module, class)) => (module.replace("::", "."), class.to_owned()),
        None => (String::new(), base.to_owned()),
    }
}

/// Picks an error type's (module, class) at compile time: its
/// [`RemoteException`] impl when it has one, else its type path. Used by
/// generated code as `(&ClassOf::<E>::new()).class_of()` with both traits in
/// scope (autoref specialization).
#[doc(hidden)]
pub struct ClassOf<T: ?Sized>(PhantomData<T>);

impl<T: ?Sized> ClassOf<T> {
    /// The probe.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        ClassOf(PhantomData)
    }
}

/// The [`RemoteException`] arm of [`ClassOf`].
#[doc(hidden)]
pub trait ViaRemoteException {
    /// (module, class).
    fn class_of(&self) -> (String, String);
}

impl<T: RemoteException + ?Sized> ViaRemoteException for ClassOf<T> {
    fn class_of(&self) -> (String, String) {
        (T::MODULE.to_owned(), T::CLASS.to_owned())
    }
}

/// The type-name fallback arm of [`ClassOf`].
#[doc(hidden)]
pub trait ViaTypeName {
    /// (module, class).
    fn class_of(&self) -> (String, String);
}

impl<T: ?Sized> ViaTypeName for &ClassOf<T> {
    fn class_of(&self) -> (String, String) {
        type_path::<T>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Declared;
    impl RemoteException for Declared {
        const CLASS: &'static str = "ValueError";
    }
    struct Undeclared;

    #[test]
    #[allow(clippy::needless_borrow)]
    fn declared_class_wins_over_the_type_name() {
        #[allow(unused_imports)]
        use super::{ViaRemoteException as _, ViaTypeName as _};
        assert_eq!(
            (&ClassOf::<Declared>::new()).class_of(),
            ("builtins".to_owned(), "ValueError".to_owned())
        );
        assert_eq!((&ClassOf::<Undeclared>::new()).class_of().1, "Undeclared");
        assert_eq!(
            type_path::<std::io::Error>(),
            ("std.io.error".to_owned(), "Error".to_owned())
        );
        assert_eq!(type_path::<Vec<u8>>().1, "Vec");
    }
}
