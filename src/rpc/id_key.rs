//! Request and message ids as table keys: warren's and oslo's own ids (32
//! lowercase hex digits, [`crate::wire::new_id`]) as the 128-bit number they
//! spell, hashed and compared without an allocation or a string; any other
//! id (a peer may send anything) as its text. Two different ids never
//! share a key.

/// An id as a table key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum IdKey {
    /// 32 lowercase hex digits.
    Hex(u128),
    /// Any other id.
    Text(Box<str>),
}

impl IdKey {
    /// The key of `id`.
    pub(crate) fn of(id: &str) -> IdKey {
        let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if id.len() == 32 && id.bytes().all(lower_hex) {
            if let Ok(n) = u128::from_str_radix(id, 16) {
                return IdKey::Hex(n);
            }
        }
        IdKey::Text(id.into())
    }
}

impl std::fmt::Display for IdKey {
    /// The id as it was received.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdKey::Hex(n) => write!(f, "{n:032x}"),
            IdKey::Text(text) => f.write_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lowercase_hex_of_the_full_length_is_a_number() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            IdKey::of(id),
            IdKey::Hex(0x0123456789abcdef0123456789abcdef)
        );
        assert_eq!(IdKey::of(id).to_string(), id, "shown as received");
        assert!(matches!(IdKey::of(&crate::wire::new_id()), IdKey::Hex(_)));
        for other in [
            &id.to_uppercase()[..],
            "+123456789abcdef0123456789abcdef",
            "abc",
            "",
        ] {
            assert_eq!(IdKey::of(other), IdKey::Text(other.into()), "{other:?}");
        }
    }
}
