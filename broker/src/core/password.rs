//! Password hashes in RabbitMQ's default scheme (`rabbit_password_hashing_sha256`):
//! a 4-byte random salt, then SHA-256 of salt ‖ password, stored as
//! base64(salt ‖ digest). A hash from `rabbitmqctl export_definitions` logs
//! in here, and one made here can be imported into RabbitMQ.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const SALT_LEN: usize = 4;
const DIGEST_LEN: usize = 32;

/// A salted password hash. Never holds the password itself.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash {
    salt: [u8; SALT_LEN],
    digest: [u8; DIGEST_LEN],
}

/// A string that is not a RabbitMQ SHA-256 password hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a RabbitMQ SHA-256 password hash (base64 of a 4-byte salt and a 32-byte digest)")]
pub struct InvalidPasswordHash;

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Even a hash can be brute-forced offline: keep it out of logs.
        f.write_str("PasswordHash(..)")
    }
}

fn digest(salt: &[u8; SALT_LEN], password: &str) -> [u8; DIGEST_LEN] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    h.finalize().into()
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt.
    pub fn new(password: &str) -> Self {
        // A v4 uuid is 122 bits from the OS generator (uuid already draws
        // them for reply queues): its first 4 bytes are a random salt.
        let id = uuid::Uuid::new_v4();
        let [a, b, c, d, ..] = *id.as_bytes();
        let salt = [a, b, c, d];
        Self::with_salt(salt, password)
    }

    /// Hashes `password` with the given salt (for known vectors).
    pub fn with_salt(salt: [u8; SALT_LEN], password: &str) -> Self {
        Self {
            salt,
            digest: digest(&salt, password),
        }
    }

    /// Reads RabbitMQ's form: base64(salt ‖ sha256(salt ‖ password)), the
    /// `password_hash` of a definitions file.
    pub fn parse(encoded: &str) -> Result<Self, InvalidPasswordHash> {
        let raw = STANDARD
            .decode(encoded.trim())
            .map_err(|_| InvalidPasswordHash)?;
        let (salt, digest) = raw.split_at_checked(SALT_LEN).ok_or(InvalidPasswordHash)?;
        Ok(Self {
            salt: salt.try_into().map_err(|_| InvalidPasswordHash)?,
            digest: digest.try_into().map_err(|_| InvalidPasswordHash)?,
        })
    }

    /// RabbitMQ's form, as [`parse`](Self::parse) reads it.
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(SALT_LEN + DIGEST_LEN);
        raw.extend_from_slice(&self.salt);
        raw.extend_from_slice(&self.digest);
        STANDARD.encode(raw)
    }

    /// Whether `password` hashes to this, compared in constant time so the
    /// time taken tells nothing about how many bytes matched.
    pub fn verify(&self, password: &str) -> bool {
        digest(&self.salt, password).ct_eq(&self.digest).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made by RabbitMQ 3.10.8: `rabbitmqctl add_user u test12`, then
    /// `export_definitions`.
    const RABBITMQ_TEST12: &str = "FDz+5gRfDNzycJvT+d7ERrAP1KfxcSK9WFUNEOMdR+0HI2Np";

    #[test]
    fn a_rabbitmq_hash_verifies_its_password_only() {
        let h = PasswordHash::parse(RABBITMQ_TEST12).unwrap();
        assert!(h.verify("test12"));
        assert!(!h.verify("test13"));
        assert!(!h.verify(""));
        assert_eq!(h.encode(), RABBITMQ_TEST12);
    }

    #[test]
    fn hashing_with_rabbitmqs_salt_gives_rabbitmqs_hash() {
        let salt = [0x14, 0x3c, 0xfe, 0xe6]; // the first 4 bytes of the vector
        assert_eq!(
            PasswordHash::with_salt(salt, "test12").encode(),
            RABBITMQ_TEST12
        );
    }

    #[test]
    fn fresh_hashes_are_salted_and_round_trip() {
        let a = PasswordHash::new("secret");
        let b = PasswordHash::new("secret");
        assert_ne!(a.encode(), b.encode(), "two salts should differ");
        assert!(a.verify("secret") && b.verify("secret"));
        assert_eq!(PasswordHash::parse(&a.encode()).unwrap(), a);
        assert_eq!(format!("{a:?}"), "PasswordHash(..)");
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in ["", "not base64!", "AAAA", &STANDARD.encode([0u8; 35])] {
            assert_eq!(PasswordHash::parse(bad), Err(InvalidPasswordHash), "{bad}");
        }
    }
}
