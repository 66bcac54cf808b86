//! `vaultctl destination propose FILE`: a destination spec file made into the `spec_json` the
//! vault checks (`vault.v1.DestinationAdminService.ProposeDestination`).
//!
//! The file is TOML if its name ends in `.toml`, JSON otherwise; TOML is converted value for
//! value (no TOML dates: a spec has none). As a convenience the file may name its trust anchor
//! by path, `trust_anchor_file`, relative to the spec file: its content is sent as
//! `trust_anchor_pem` and the path is not sent (the vault refuses unknown fields). Nothing
//! else is checked here: the vault checks every field, and computes the fingerprint from its
//! canonical JSON, so the key order and spacing of what is sent do not matter.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::Error;

/// The spec field naming a trust anchor file, replaced by [`TRUST_ANCHOR_PEM`].
pub const TRUST_ANCHOR_FILE: &str = "trust_anchor_file";
/// The spec field holding the trust anchor certificates (PEM).
pub const TRUST_ANCHOR_PEM: &str = "trust_anchor_pem";

/// Reads the spec in `path` and returns it as compact JSON, ready for `spec_json`.
///
/// # Errors
/// [`Error::Config`] if the file or its trust anchor file cannot be read, is not valid TOML or
/// JSON, is not a table/object, or names both `trust_anchor_file` and `trust_anchor_pem`.
pub fn read_spec(path: &Path) -> Result<String, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
    let mut spec = parse_spec(path, &text)?;
    if let Some(file) = spec.remove(TRUST_ANCHOR_FILE) {
        let Value::String(file) = file else {
            return Err(Error::Config(format!(
                "{}: {TRUST_ANCHOR_FILE} must be a path (a string)",
                path.display()
            )));
        };
        if spec.contains_key(TRUST_ANCHOR_PEM) {
            return Err(Error::Config(format!(
                "{}: give {TRUST_ANCHOR_FILE} or {TRUST_ANCHOR_PEM}, not both",
                path.display()
            )));
        }
        let anchor = path
            .parent()
            .map_or_else(|| Path::new(&file).to_owned(), |dir| dir.join(&file));
        let pem = std::fs::read_to_string(&anchor).map_err(|e| {
            Error::Config(format!(
                "cannot read the trust anchor {} ({TRUST_ANCHOR_FILE} in {}): {e}",
                anchor.display(),
                path.display()
            ))
        })?;
        spec.insert(TRUST_ANCHOR_PEM.to_owned(), Value::String(pem));
    }
    serde_json::to_string(&Value::Object(spec))
        .map_err(|e| Error::Config(format!("{}: cannot encode as JSON: {e}", path.display())))
}

/// The spec in `text` (TOML if `path` ends in `.toml`, else JSON) as a JSON object.
fn parse_spec(path: &Path, text: &str) -> Result<Map<String, Value>, Error> {
    let is_toml = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("toml"));
    let value = if is_toml {
        let table: toml::Table = toml::from_str(text)
            .map_err(|e| Error::Config(format!("{} is not valid TOML: {e}", path.display())))?;
        toml_to_json(toml::Value::Table(table))
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
    } else {
        serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("{} is not valid JSON: {e}", path.display())))?
    };
    match value {
        Value::Object(spec) => Ok(spec),
        _ => Err(Error::Config(format!(
            "{}: a destination spec is an object (JSON) or a table (TOML)",
            path.display()
        ))),
    }
}

/// `value` as JSON: strings, integers, booleans, arrays and tables as they are, finite floats
/// as numbers.
///
/// # Errors
/// For a TOML date or time, or a float that is not finite: neither is in a spec, and JSON has
/// neither.
fn toml_to_json(value: toml::Value) -> Result<Value, String> {
    Ok(match value {
        toml::Value::String(text) => Value::String(text),
        toml::Value::Integer(number) => Value::from(number),
        toml::Value::Float(number) => serde_json::Number::from_f64(number)
            .map(Value::Number)
            .ok_or_else(|| format!("{number} has no JSON form"))?,
        toml::Value::Boolean(flag) => Value::Bool(flag),
        toml::Value::Datetime(at) => {
            return Err(format!("{at}: a destination spec holds no dates or times"));
        }
        toml::Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(toml_to_json)
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(key, value)| Ok((key, toml_to_json(value)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn expected() -> Value {
        json!({
            "name": "acme",
            "base_url": "https://psp.example:8443/api",
            "trust_anchor_pem": PEM,
            "pinned_sha256": null,
            "methods": ["POST"],
            "path_patterns": ["/v1/charges", "/v1/payments/*/capture"],
            "request_headers": ["idempotency-key"],
            "response_headers": ["content-type"],
            "templates": {
                "charge": {
                    "content_type": "json",
                    "body": "{\"number\":\"{{card.number}}\",\"amount\":{{var.amount}}}",
                },
            },
            "timeout_ms": 10000,
            "max_response_bytes": 65536,
        })
    }

    fn sent(path: &Path) -> Value {
        serde_json::from_str(&read_spec(path).unwrap()).unwrap()
    }

    #[test]
    fn toml_with_a_trust_anchor_file_becomes_the_json_spec() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        std::fs::write(dir.path().join("certs/acme-ca.pem"), PEM).unwrap();
        let path = dir.path().join("acme.TOML");
        std::fs::write(
            &path,
            r#"
name = "acme"
base_url = "https://psp.example:8443/api"
trust_anchor_file = "certs/acme-ca.pem"
methods = ["POST"]
path_patterns = ["/v1/charges", "/v1/payments/*/capture"]
request_headers = ["idempotency-key"]
response_headers = ["content-type"]
timeout_ms = 10000
max_response_bytes = 65536

[templates.charge]
content_type = "json"
body = '{"number":"{{card.number}}","amount":{{var.amount}}}'
"#,
        )
        .unwrap();
        let mut want = expected();
        if let Value::Object(spec) = &mut want {
            spec.remove("pinned_sha256");
        }
        assert_eq!(sent(&path), want);
    }

    #[test]
    fn json_is_sent_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acme.json");
        std::fs::write(&path, serde_json::to_string_pretty(&expected()).unwrap()).unwrap();
        assert_eq!(sent(&path), expected());
        // Any name but .toml is JSON.
        let path = dir.path().join("acme.spec");
        std::fs::write(&path, expected().to_string()).unwrap();
        assert_eq!(sent(&path), expected());
    }

    #[test]
    fn bad_files_are_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let cases = [
            (write("a.json", "name = \"acme\""), "is not valid JSON"),
            (write("b.toml", "{\"name\":\"acme\"}"), "is not valid TOML"),
            (write("c.json", "[1]"), "a destination spec is an object"),
            (
                write("d.toml", "trust_anchor_file = \"missing.pem\""),
                "cannot read the trust anchor",
            ),
            (write("e.toml", "trust_anchor_file = 3"), "must be a path"),
            (
                write(
                    "f.json",
                    r#"{"trust_anchor_file":"x","trust_anchor_pem":"y"}"#,
                ),
                "not both",
            ),
            (write("g.toml", "at = 2026-01-01"), "no dates or times"),
            (dir.path().join("absent.json"), "cannot read"),
        ];
        for (path, message) in cases {
            let err = read_spec(&path).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err:?}");
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains(message), "{path:?}: {err}");
        }
    }
}
