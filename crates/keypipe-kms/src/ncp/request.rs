//! JSON request and response types of the NCP KMS actions.
//!
//! Requests are typed serde structs that borrow their strings from the body
//! when they can (no `serde_json::Value`); a string that must be unescaped
//! is copied into a zeroizing buffer. Unknown fields are ignored; `null`
//! counts as absent for optional fields.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};
use serde::{Serialize, Serializer};
use zeroize::Zeroizing;

use super::NcpError;

/// Most items in one array field.
pub(crate) const MAX_ITEMS: usize = 1000;

/// A JSON string of the request, borrowed from the body when possible.
/// Its `Debug` shows the length only.
pub(crate) enum Text<'a> {
    /// Borrowed from the body (no escapes in the JSON string).
    Borrowed(&'a str),
    /// Unescaped copy.
    Owned(Zeroizing<String>),
}

impl Text<'_> {
    /// The string.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Owned(s) => s.as_str(),
        }
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Text(<{} chars>)", self.as_str().len())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let mut s = Zeroizing::new(String::with_capacity(v.len()));
                s.push_str(v);
                Ok(Text::Owned(s))
            }
        }
        deserializer.deserialize_str(V(PhantomData))
    }
}

/// A field that is one value or an array of at most [`MAX_ITEMS`].
#[derive(Debug)]
pub(crate) enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// An array (answered with an array, same order).
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    /// The items.
    pub(crate) fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(t) => std::slice::from_ref(t),
            OneOrMany::Many(v) => v,
        }
    }

    /// Whether this was an array.
    pub(crate) fn is_many(&self) -> bool {
        matches!(self, OneOrMany::Many(_))
    }

    /// Same shape, from the items' results in order.
    pub(crate) fn reshape<U>(&self, mut items: Vec<U>) -> OneOrMany<U> {
        if !self.is_many()
            && items.len() == 1
            && let Some(u) = items.pop()
        {
            return OneOrMany::One(u);
        }
        OneOrMany::Many(items)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for OneOrMany<Text<'a>> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = OneOrMany<Text<'a>>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a string or an array of at most {MAX_ITEMS} strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(Text::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let mut s = Zeroizing::new(String::with_capacity(v.len()));
                s.push_str(v);
                Ok(OneOrMany::One(Text::Owned(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_ITEMS));
                while let Some(item) = seq.next_element::<Text<'a>>()? {
                    if items.len() == MAX_ITEMS {
                        return Err(de::Error::custom(format_args!(
                            "more than {MAX_ITEMS} items"
                        )));
                    }
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        deserializer.deserialize_any(V(PhantomData))
    }
}

/// `encrypt` body.
#[derive(Debug, serde::Deserialize)]
#[serde(expecting = "a JSON object")]
pub(crate) struct EncryptRequest<'a> {
    /// Base64 plaintext, or an array of them.
    #[serde(borrow)]
    pub plaintext: OneOrMany<Text<'a>>,
    /// Base64 context (convergent keys).
    #[serde(borrow, default)]
    pub context: Option<Text<'a>>,
}

/// `decrypt` and `reencrypt` body.
#[derive(Debug, serde::Deserialize)]
#[serde(expecting = "a JSON object")]
pub(crate) struct CiphertextRequest<'a> {
    /// `ncpkms:v{n}:…` ciphertext, or an array of them.
    #[serde(borrow)]
    pub ciphertext: OneOrMany<Text<'a>>,
    /// Base64 context, as at encryption.
    #[serde(borrow, default)]
    pub context: Option<Text<'a>>,
}

/// `createCustomKey` body.
#[derive(Debug, serde::Deserialize)]
#[serde(expecting = "a JSON object")]
pub(crate) struct CreateCustomKeyRequest<'a> {
    /// Whether to return the data key in the clear too (default false).
    #[serde(rename = "requestPlainKey", default)]
    pub request_plain_key: Option<bool>,
    /// Data key size: 128, 256 (default) or 512.
    #[serde(default)]
    pub bits: Option<u32>,
    /// Base64 context (convergent keys).
    #[serde(borrow, default)]
    pub context: Option<Text<'a>>,
}

/// `sign` body.
#[derive(Debug, serde::Deserialize)]
#[serde(expecting = "a JSON object")]
pub(crate) struct SignRequest<'a> {
    /// Base64 data to sign.
    #[serde(borrow)]
    pub data: Text<'a>,
}

/// `verify` body.
#[derive(Debug, serde::Deserialize)]
#[serde(expecting = "a JSON object")]
pub(crate) struct VerifyRequest<'a> {
    /// Base64 data that was signed.
    #[serde(borrow)]
    pub data: Text<'a>,
    /// `ncpkms:v{n}:…` signature.
    #[serde(borrow)]
    pub signature: Text<'a>,
}

/// Parses a request body. A failure is a 400 whose message names the
/// field (path) at fault; values from the body are never echoed.
pub(crate) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, NcpError> {
    // serde would also take a struct from a JSON array; only objects count.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => return Err(NcpError::InvalidRequest("body is empty".into())),
        Some(b'{') => {}
        Some(_) => return Err(NcpError::InvalidRequest("body is not a JSON object".into())),
    }
    // JSON is UTF-8 (RFC 8259); serde would skip an ignored field's string
    // without checking it.
    let body = std::str::from_utf8(body)
        .map_err(|_| NcpError::InvalidRequest("body is not UTF-8 JSON".into()))?;
    let mut de = serde_json::Deserializer::from_str(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = redact(&inner.to_string());
        NcpError::InvalidRequest(match inner.classify() {
            serde_json::error::Category::Data if path == "." => msg,
            serde_json::error::Category::Data => format!("field `{path}`: {msg}"),
            _ => format!("body is not valid JSON: {msg}"),
        })
    })?;
    de.end().map_err(|e| {
        NcpError::InvalidRequest(format!(
            "body is not valid JSON: {}",
            redact(&e.to_string())
        ))
    })?;
    Ok(value)
}

/// serde's `invalid type: <value>, expected <what>` echoes the value; keep
/// the kind and what was expected only.
fn redact(msg: &str) -> String {
    for kind in ["invalid type", "invalid value", "invalid length"] {
        if let Some(rest) = msg.strip_prefix(kind) {
            return match rest.rfind(", expected ") {
                Some(pos) => format!("{kind}, expected {}", &rest[pos + 11..]),
                None => kind.to_owned(),
            };
        }
    }
    msg.to_owned()
}

/// A success answer: `{"code":"SUCCESS","msg":"","data":…}`.
#[derive(Serialize)]
pub(crate) struct Success<D> {
    /// Always `SUCCESS`.
    pub code: &'static str,
    /// Always empty.
    pub msg: &'static str,
    /// The action's data.
    pub data: D,
}

impl<T: Serialize> Serialize for OneOrMany<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            OneOrMany::One(t) => t.serialize(serializer),
            OneOrMany::Many(v) => v.serialize(serializer),
        }
    }
}

/// `data` of `encrypt` and `reencrypt`.
#[derive(Serialize)]
pub(crate) struct CiphertextData {
    /// Ciphertext text(s), same shape as the input.
    pub ciphertext: OneOrMany<String>,
}

/// `data` of `decrypt`.
#[derive(Serialize)]
pub(crate) struct PlaintextData {
    /// Base64 plaintext(s), same shape as the input.
    pub plaintext: OneOrMany<Zeroizing<String>>,
}

/// `data` of `createCustomKey`.
#[derive(Serialize)]
pub(crate) struct CustomKeyData {
    /// The data key encrypted under the newest version.
    pub ciphertext: String,
    /// The version it was encrypted under.
    pub key_version: u32,
    /// Base64 of the data key, only when `requestPlainKey` was true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<Zeroizing<String>>,
}

/// `data` of `sign`.
#[derive(Serialize)]
pub(crate) struct SignatureData {
    /// `ncpkms:v{n}:{Base64(signature)}`.
    pub signature: String,
}

/// `data` of `verify`.
#[derive(Serialize)]
pub(crate) struct VerifyData {
    /// Whether the signature is valid.
    pub valid: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<'a, T: Deserialize<'a> + fmt::Debug>(body: &'a str) -> String {
        match parse::<T>(body.as_bytes()) {
            Err(NcpError::InvalidRequest(m)) => m,
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[test]
    fn borrows_unescaped_strings() {
        let r: EncryptRequest = parse(br#"{"plaintext":"YWJj","context":"eA=="}"#).unwrap();
        assert!(matches!(
            r.plaintext,
            OneOrMany::One(Text::Borrowed("YWJj"))
        ));
        assert_eq!(r.context.unwrap().as_str(), "eA==");
        let r: EncryptRequest = parse(br#"{"plaintext":"YW\/j"}"#).unwrap();
        assert!(matches!(&r.plaintext, OneOrMany::One(Text::Owned(_))));
        assert_eq!(r.plaintext.as_slice()[0].as_str(), "YW/j");
    }

    #[test]
    fn arrays_keep_order_and_limit() {
        let r: CiphertextRequest = parse(br#"{"ciphertext":["a","b","c"]}"#).unwrap();
        let items: Vec<_> = r.ciphertext.as_slice().iter().map(Text::as_str).collect();
        assert_eq!(items, ["a", "b", "c"]);
        assert!(r.ciphertext.is_many());
        let many = format!(
            r#"{{"plaintext":[{}]}}"#,
            vec![r#""YQ==""#; MAX_ITEMS + 1].join(",")
        );
        let m = err::<EncryptRequest>(&many);
        assert!(m.contains("plaintext") && m.contains("1000"), "{m}");
        let ok = format!(
            r#"{{"plaintext":[{}]}}"#,
            vec![r#""YQ==""#; MAX_ITEMS].join(",")
        );
        assert!(parse::<EncryptRequest>(ok.as_bytes()).is_ok());
    }

    #[test]
    fn errors_name_the_field_and_hide_values() {
        let m = err::<EncryptRequest>(r#"{"context":"eA=="}"#);
        assert!(m.contains("missing field `plaintext`"), "{m}");
        let m = err::<EncryptRequest>(r#"{"plaintext":5}"#);
        assert!(
            m.contains("`plaintext`") && m.contains("invalid type"),
            "{m}"
        );
        let m = err::<EncryptRequest>(r#"{"plaintext":["YQ==", 7]}"#);
        assert!(m.contains("plaintext[1]"), "{m}");
        let m = err::<CreateCustomKeyRequest>(r#"{"requestPlainKey":"s3cr3t, expected x"}"#);
        assert!(
            m.contains("requestPlainKey") && !m.contains("s3cr3t"),
            "{m}"
        );
        let m = err::<CreateCustomKeyRequest>(r#"{"bits":99999999999}"#);
        assert!(m.contains("bits") && !m.contains("99999"), "{m}");
        let m = err::<VerifyRequest>(r#"{"data":"YQ=="}"#);
        assert!(m.contains("missing field `signature`"), "{m}");
        let m = err::<SignRequest>("not json");
        assert_eq!(m, "body is not a JSON object");
        let m = err::<SignRequest>(r#"{"data":tru}"#);
        assert!(m.starts_with("body is not valid JSON"), "{m}");
        let m = err::<SignRequest>(r#"{"data":"YQ=="} x"#);
        assert!(m.starts_with("body is not valid JSON"), "{m}");
        let m = err::<SignRequest>("[1]");
        assert!(m.contains("JSON object"), "{m}");
        let m = err::<SignRequest>("");
        assert_eq!(m, "body is empty");
        let m = err::<CreateCustomKeyRequest>("[]");
        assert_eq!(m, "body is not a JSON object");
        let m = err::<SignRequest>("{");
        assert!(m.starts_with("body is not valid JSON"), "{m}");
    }

    #[test]
    fn nulls_are_absent_and_unknown_fields_ignored() {
        let r: CreateCustomKeyRequest =
            parse(br#"{"requestPlainKey":null,"bits":null,"context":null,"x":1}"#).unwrap();
        assert!(r.request_plain_key.is_none() && r.bits.is_none() && r.context.is_none());
    }

    #[test]
    fn success_shapes() {
        let one = Success {
            code: "SUCCESS",
            msg: "",
            data: CiphertextData {
                ciphertext: OneOrMany::One("c".to_owned()),
            },
        };
        assert_eq!(
            serde_json::to_string(&one).unwrap(),
            r#"{"code":"SUCCESS","msg":"","data":{"ciphertext":"c"}}"#
        );
        let shape = OneOrMany::<u8>::Many(vec![]).reshape(vec!["x"]);
        assert!(matches!(shape, OneOrMany::Many(v) if v == ["x"]));
        let shape = OneOrMany::One(0u8).reshape(vec!["x"]);
        assert!(matches!(shape, OneOrMany::One("x")));
    }
}
