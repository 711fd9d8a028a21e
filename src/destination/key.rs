//! The API key: one type wherever a key is held, which never prints its
//! text.

use std::fmt;

use sha2::Digest as _;

/// What replaces a key in text.
pub(crate) const REDACTED: &str = "[redacted]";

/// An API key. It prints as `[redacted]` (`Debug` and `Display`) and has no
/// `Serialize`; [`ApiKey::expose`] is the only way to its text, for the
/// HTTP client.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ApiKey(String);

impl ApiKey {
    pub(crate) fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// The key itself: only for the `Authorization` header.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// `sha256:` and 8 hex digits of the key's hash: tells keys apart in
    /// status output without revealing them.
    pub(crate) fn fingerprint(&self) -> String {
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        format!("sha256:{}", crate::fs::hex(&digest[..4]))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({REDACTED})")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}
