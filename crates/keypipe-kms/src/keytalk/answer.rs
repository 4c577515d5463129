//! RCDP answers, typed the way every client parses them: HTTP 200 for
//! every outcome, a `status` always, numbers and booleans as JSON
//! strings (the Go SDK and the Swift apps decode them into strings;
//! only the error `code` stays a number), optional keys left out rather
//! than `null`, and `description` in every error.

use serde_json::{Map, Value};

/// Error code: none of the client's resolved addresses matches.
pub const ERR_RESOLVED_IP: u32 = 1001;
/// Error code: a service file's digest differs.
pub const ERR_DIGEST: u32 = 1002;
/// Error code: the client's clock is off by more than allowed; the
/// description is the signed difference (client − server) in seconds.
pub const ERR_TIME_OUT_OF_SYNC: u32 = 1003;
/// Error code: the request cannot be served (wrong phase, unknown or
/// expired session, unknown service, a missing or bad parameter). keypipe
/// uses it for every protocol error the vendor's table has no code for.
pub const ERR_PROTOCOL: u32 = 1000;

/// One RCDP answer (a JSON object).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer(Map<String, Value>);

impl Answer {
    /// `{"status": status}`.
    pub fn status(status: &str) -> Answer {
        let mut map = Map::new();
        map.insert("status".into(), Value::from(status));
        Answer(map)
    }

    /// Adds a string.
    pub fn text(mut self, key: &str, value: impl Into<String>) -> Answer {
        self.0.insert(key.into(), Value::String(value.into()));
        self
    }

    /// Adds a boolean, as `"true"` or `"false"`.
    pub fn flag(self, key: &str, value: bool) -> Answer {
        self.text(key, if value { "true" } else { "false" })
    }

    /// Adds an integer, as a string.
    pub fn number(self, key: &str, value: i64) -> Answer {
        self.text(key, value.to_string())
    }

    /// Adds any JSON value (arrays of strings or of string objects).
    pub fn value(mut self, key: &str, value: Value) -> Answer {
        self.0.insert(key.into(), value);
        self
    }

    /// `{"status":"error","code":code,"description":description}`.
    pub fn error(code: u32, description: impl Into<String>) -> Answer {
        let mut a = Answer::status("error").text("description", description);
        a.0.insert("code".into(), Value::from(code));
        a
    }

    /// `{"status":"eoc"}`.
    pub fn eoc() -> Answer {
        Answer::status("eoc")
    }

    /// The `status`.
    pub fn status_text(&self) -> &str {
        self.0.get("status").and_then(Value::as_str).unwrap_or("")
    }

    /// The body: compact JSON with `/` escaped as `\/`, as the vendor's
    /// server writes it (and as its documents ask of JSON).
    pub fn to_body(&self) -> Vec<u8> {
        json_body(&self.0)
    }
}

/// Compact JSON with `/` escaped as `\/` (every KeyTalk answer).
pub fn json_body(value: &impl serde::Serialize) -> Vec<u8> {
    let text = serde_json::to_string(value).unwrap_or_default();
    text.replace('/', "\\/").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_rules() {
        let a = Answer::status("auth-result")
            .text("auth-status", "DELAY")
            .number("delay", 10)
            .flag("x", false);
        let v: Value = serde_json::from_slice(&a.to_body()).unwrap();
        assert_eq!(v["delay"], "10");
        assert_eq!(v["x"], "false");
        let e: Value = serde_json::from_slice(&Answer::error(1003, "-42").to_body()).unwrap();
        assert_eq!(e["code"], 1003);
        assert_eq!(e["description"], "-42");
        let body = Answer::status("cert").text("cert", "a/b").to_body();
        assert!(String::from_utf8(body).unwrap().contains(r"a\/b"));
    }
}
