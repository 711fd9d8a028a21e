//! Paths are bytes on Linux: a run directory may be named with anything but
//! `/` and NUL, UTF-8 or not. Everything syncd writes down (ledger,
//! heartbeat, `--json` reports) carries a path losslessly, and everything it
//! shows a person escapes the bytes that are not text.
//!
//! The serialized form is the plain string when the path is UTF-8 (so every
//! file written before this existed still reads, and almost every path looks
//! as it always did), otherwise an object holding the bytes in hex and an
//! escaped rendering for people reading the JSON:
//! `{"bytes_hex": "2f72756e2de9", "display": "/run-\\xe9"}`.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The path for a person: UTF-8 as is, every other byte as `\xNN`.
pub(crate) fn display(path: &Path) -> String {
    escape(path.as_os_str())
}

/// [`display`] for any OS string (a file name, a path component).
pub(crate) fn escape(s: &OsStr) -> String {
    let mut out = String::new();
    for chunk in s.as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr<'a> {
    Text(std::borrow::Cow<'a, str>),
    Bytes {
        bytes_hex: String,
        #[serde(default)]
        display: Option<String>,
    },
}

fn to_repr(path: &Path) -> Repr<'_> {
    match path.to_str() {
        Some(text) => Repr::Text(text.into()),
        None => Repr::Bytes {
            bytes_hex: hex(path.as_os_str().as_bytes()),
            display: Some(display(path)),
        },
    }
}

/// Lowercase hex, the inverse of what [`from_repr`] decodes (kept here, not
/// taken from [`crate::fs`], which shows paths through this module).
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_repr<E: serde::de::Error>(repr: Repr<'_>) -> Result<PathBuf, E> {
    match repr {
        Repr::Text(text) => Ok(PathBuf::from(text.into_owned())),
        Repr::Bytes { bytes_hex, .. } => {
            let digits = bytes_hex.as_bytes();
            if digits.len() % 2 != 0 {
                return Err(E::custom("bytes_hex has an odd number of digits"));
            }
            let nibble = |d: u8| {
                (d as char)
                    .to_digit(16)
                    .ok_or_else(|| E::custom("bytes_hex holds a non-hex digit"))
            };
            let bytes = digits
                .chunks(2)
                .map(|pair| Ok((nibble(pair[0])? * 16 + nibble(pair[1])?) as u8))
                .collect::<Result<Vec<u8>, E>>()?;
            Ok(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
        }
    }
}

/// `#[serde(with = "crate::paths::serde_path")]` on a `PathBuf`.
pub(crate) mod serde_path {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        to_repr(path).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        from_repr(Repr::deserialize(d)?)
    }
}

/// `#[serde(with = "crate::paths::serde_opt_path")]` on an `Option<PathBuf>`.
pub(crate) mod serde_opt_path {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        path: &Option<PathBuf>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        path.as_deref().map(to_repr).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<PathBuf>, D::Error> {
        Option::<Repr>::deserialize(d)?.map(from_repr).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Holder {
        #[serde(with = "serde_path")]
        path: PathBuf,
        #[serde(with = "serde_opt_path", default)]
        maybe: Option<PathBuf>,
    }

    fn odd() -> PathBuf {
        PathBuf::from(std::ffi::OsString::from_vec(
            b"/runs/offline-run-x-\xe9\\y".to_vec(),
        ))
    }

    #[test]
    fn any_path_round_trips_and_text_stays_a_string() {
        for holder in [
            Holder {
                path: odd(),
                maybe: Some(odd()),
            },
            Holder {
                path: "/runs/plain ü".into(),
                maybe: None,
            },
        ] {
            let json = serde_json::to_string(&holder).unwrap();
            assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), holder);
        }
        let json = serde_json::to_value(Holder {
            path: "/a/b".into(),
            maybe: Some(odd()),
        })
        .unwrap();
        assert_eq!(json["path"], "/a/b");
        assert_eq!(json["maybe"]["display"], "/runs/offline-run-x-\\xe9\\y");
        assert_eq!(
            json["maybe"]["bytes_hex"],
            hex(b"/runs/offline-run-x-\xe9\\y")
        );
    }

    #[test]
    fn display_escapes_only_what_is_not_text() {
        assert_eq!(display(&odd()), "/runs/offline-run-x-\\xe9\\y");
        assert_eq!(display(Path::new("/é/ok")), "/é/ok");
    }

    #[test]
    fn damaged_byte_forms_are_errors() {
        for bad in [
            r#"{"path":{"bytes_hex":"abc"}}"#,
            r#"{"path":{"bytes_hex":"zz"}}"#,
        ] {
            assert!(serde_json::from_str::<Holder>(bad).is_err(), "{bad}");
        }
    }
}
