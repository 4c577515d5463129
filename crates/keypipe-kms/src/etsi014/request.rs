//! The two request models (ETSI GS QKD 014 tables 10 and 12), from a query
//! string or a JSON body: strict on meaning (exact types, no partial
//! answers), tolerant on syntax (unknown fields ignored, an empty POST is
//! the empty request).

use serde_json::Value;
use uuid::Uuid;

use super::Refusal;

/// `size shall be a multiple of 8` (normative).
pub const SIZE_MULTIPLE: &str = "size shall be a multiple of 8";
/// `not all extension_mandatory parameters are supported` (normative).
pub const EXT_MANDATORY: &str = "not all extension_mandatory parameters are supported";

/// A key request before it is checked against the service's limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRequest {
    /// `number`, when given.
    pub number: Option<u64>,
    /// `size` (bits), when given.
    pub size: Option<u64>,
    /// `additional_slave_SAE_IDs`, when given.
    pub additional: Option<Vec<String>>,
}

fn bad(message: impl Into<std::borrow::Cow<'static, str>>) -> Refusal {
    Refusal::bad_request(message)
}

/// Parses `text` as a decimal count for `name` (query form).
fn query_count(name: &str, text: &str) -> Result<u64, Refusal> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 12 {
        return Err(bad(format!("{name} must be a positive integer")));
    }
    text.parse()
        .map_err(|_| bad(format!("{name} must be a positive integer")))
}

/// The values of `query` (`a=1&b=2`), decoded.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    crate::form::pairs(query.unwrap_or("").as_bytes()).collect()
}

/// A path segment (an SAE ID), percent-decoded (`+` stays a `+`).
pub fn percent_decode(text: &str) -> String {
    crate::form::percent_decode(text.as_bytes(), false)
}

/// A key request from a GET query (`number`, `size`; others ignored).
pub fn key_request_from_query(query: Option<&str>) -> Result<KeyRequest, Refusal> {
    let mut req = KeyRequest::default();
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "number" => req.number = Some(query_count("number", &v)?),
            "size" => req.size = Some(query_count("size", &v)?),
            _ => {}
        }
    }
    Ok(req)
}

fn body_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad("the request body must be a JSON object")),
        Err(e) => Err(bad(format!("the request body is not valid JSON: {e}"))),
    }
}

fn json_count(name: &str, v: &Value) -> Result<Option<u64>, Refusal> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_u64() {
            Some(n) => Ok(Some(n)),
            None => Err(bad(format!("{name} must be a positive integer"))),
        },
        _ => Err(bad(format!("{name} must be a JSON integer"))),
    }
}

/// A key request from a POST body (an empty body is the empty request).
pub fn key_request_from_body(body: &[u8]) -> Result<KeyRequest, Refusal> {
    let map = body_object(body)?;
    let mut req = KeyRequest::default();
    if let Some(v) = map.get("number") {
        req.number = json_count("number", v)?;
    }
    if let Some(v) = map.get("size") {
        req.size = json_count("size", v)?;
    }
    match map.get("additional_slave_SAE_IDs") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            let mut ids = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => ids.push(s.clone()),
                    _ => return Err(bad("additional_slave_SAE_IDs must be an array of strings")),
                }
            }
            req.additional = Some(ids);
        }
        Some(_) => return Err(bad("additional_slave_SAE_IDs must be an array of strings")),
    }
    match map.get("extension_mandatory") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) if items.is_empty() => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_object) => {
            // keypipe defines no extension: any one named is unsupported.
            return Err(bad(EXT_MANDATORY));
        }
        Some(_) => return Err(bad("extension_mandatory must be an array of objects")),
    }
    match map.get("extension_optional") {
        None | Some(Value::Null) | Some(Value::Array(_)) => {}
        Some(_) => return Err(bad("extension_optional must be an array of objects")),
    }
    Ok(req)
}

fn parse_id(text: &str) -> Result<Uuid, Refusal> {
    Uuid::try_parse(text).map_err(|_| {
        let shown: String = text.chars().take(64).collect();
        bad(format!("key_ID {shown:?} is not a UUID"))
    })
}

/// Key ids from a GET query (`key_ID`, possibly repeated).
pub fn key_ids_from_query(query: Option<&str>) -> Result<Vec<Uuid>, Refusal> {
    let ids = query_pairs(query)
        .into_iter()
        .filter(|(k, _)| k == "key_ID")
        .map(|(_, v)| parse_id(&v))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Err(bad("key_ID is required"));
    }
    Ok(ids)
}

/// Key ids from a POST body: `{"key_IDs":[{"key_ID":…}]}` (an entry may
/// also be the id as a string; other fields are ignored).
pub fn key_ids_from_body(body: &[u8]) -> Result<Vec<Uuid>, Refusal> {
    let map = body_object(body)?;
    let Some(Value::Array(items)) = map.get("key_IDs") else {
        return Err(bad(
            "key_IDs must be an array of {\"key_ID\": UUID} objects",
        ));
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let text = match item {
            Value::Object(o) => match o.get("key_ID") {
                Some(Value::String(s)) => s.as_str(),
                _ => return Err(bad("each entry of key_IDs needs a key_ID string")),
            },
            Value::String(s) => s.as_str(),
            _ => {
                return Err(bad(
                    "key_IDs must be an array of {\"key_ID\": UUID} objects",
                ));
            }
        };
        ids.push(parse_id(text)?);
    }
    if ids.is_empty() {
        return Err(bad("key_IDs is empty"));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_and_bodies() {
        let q = key_request_from_query(Some("number=3&size=1024&x=y")).unwrap();
        assert_eq!((q.number, q.size), (Some(3), Some(1024)));
        for bad in [
            "number=abc01",
            "size=-8",
            "number=",
            "size=1.5",
            "number=%31x",
        ] {
            let e = key_request_from_query(Some(bad)).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
        }
        assert_eq!(key_request_from_body(b"").unwrap(), KeyRequest::default());
        assert_eq!(key_request_from_body(b"{}").unwrap(), KeyRequest::default());
        let b = key_request_from_body(
            br#"{"number":2,"size":512,"additional_slave_SAE_IDs":["c"],"additional_target_sae_ids":[],"extension_optional":[{"x_y":1}]}"#,
        )
        .unwrap();
        assert_eq!(b.additional, Some(vec!["c".to_owned()]));
        for (body, message) in [
            (&br#"{"size":"256"}"#[..], "size must be a JSON integer"),
            (br#"{"number":-8}"#, "number must be a positive integer"),
            (br#"{"number":1.5}"#, "number must be a positive integer"),
            (
                br#"{"extension_mandatory":[{"abc_route_type":"direct"}]}"#,
                EXT_MANDATORY,
            ),
            (br#"[1]"#, "the request body must be a JSON object"),
        ] {
            assert_eq!(key_request_from_body(body).unwrap_err().message, message);
        }
        let id = Uuid::new_v4();
        assert_eq!(
            key_ids_from_query(Some(&format!("key_ID={id}"))).unwrap(),
            vec![id]
        );
        let body = format!(r#"{{"key_IDs":[{{"key_ID":"{id}","master_SAE_ID":"x"}},"{id}"]}}"#);
        assert_eq!(key_ids_from_body(body.as_bytes()).unwrap(), vec![id, id]);
        assert_eq!(
            key_ids_from_query(Some("key_ID=nope")).unwrap_err().status,
            400
        );
        assert_eq!(
            key_ids_from_body(br#"{"key_IDs":[]}"#).unwrap_err().status,
            400
        );
    }
}
