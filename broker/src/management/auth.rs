//! HTTP basic authentication with the broker's users, and what their tags
//! allow, as RabbitMQ's management plugin decides it: `administrator` may
//! do everything, `monitoring` may see everything, `management` may see
//! and manage the vhosts it has permissions on; users without one of those
//! tags may not use the API.

use axum::http::{header, HeaderMap};
use base64::Engine as _;

use super::error::ApiError;
use crate::core::Core;

/// A user the request authenticated as.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// The user name.
    pub name: String,
    /// Its tags.
    pub tags: Vec<String>,
}

impl Caller {
    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// May manage users, permissions, vhosts and definitions.
    pub fn is_administrator(&self) -> bool {
        self.has("administrator")
    }

    /// May see every vhost's objects and every connection.
    pub fn sees_everything(&self) -> bool {
        self.is_administrator() || self.has("monitoring")
    }

    /// Refuses anyone but an administrator.
    pub fn require_administrator(&self) -> Result<(), ApiError> {
        if self.is_administrator() {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Not administrator user"))
        }
    }

    /// Whether the caller may see and manage `vhost`'s objects.
    pub fn may_use(&self, core: &Core, vhost: &str) -> bool {
        self.sees_everything() || core.can_access(&self.name, vhost)
    }

    /// Refuses a caller who may not use `vhost`.
    pub fn require_vhost(&self, core: &Core, vhost: &str) -> Result<(), ApiError> {
        if self.may_use(core, vhost) {
            Ok(())
        } else {
            Err(ApiError::not_authorised("Access refused."))
        }
    }
}

/// The user an `Authorization: Basic` header names, if its password checks
/// out and it has a management tag.
pub(crate) fn authenticate(core: &Core, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let (name, password) =
        credentials(headers).ok_or_else(|| ApiError::unauthenticated("Not_Authorized"))?;
    if !core.authenticate(&name, &password) {
        return Err(ApiError::unauthenticated("Not_Authorized"));
    }
    let tags = core.user_tags(&name).unwrap_or_default();
    let caller = Caller { name, tags };
    if caller.sees_everything() || caller.has("management") || caller.has("policymaker") {
        Ok(caller)
    } else {
        Err(ApiError::unauthenticated("Not management user"))
    }
}

/// The user name and password of an `Authorization: Basic` header.
pub(crate) fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (name, password) = decoded.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().expect("header"));
        headers
    }

    #[test]
    fn basic_credentials_are_read_and_garbage_is_not() {
        assert_eq!(
            credentials(&with("Basic Z3Vlc3Q6Z3Vlc3Q=")),
            Some(("guest".into(), "guest".into()))
        );
        // A password may hold colons.
        assert_eq!(
            credentials(&with("basic dTpwOnE=")),
            Some(("u".into(), "p:q".into()))
        );
        for bad in ["Bearer abc", "Basic !!!", "Basic", "Basic Z3Vlc3Q="] {
            assert_eq!(credentials(&with(bad)), None, "{bad}");
        }
        assert_eq!(credentials(&HeaderMap::new()), None);
    }
}
