//! A destination: where a card may be sent and how. [`DestinationSpec`] is what an admin
//! proposes (JSON, every field checked here); its canonical JSON is what a second admin
//! approves and what its fingerprint hashes. [`Destination`] is an approved spec made ready to
//! use: its templates and path patterns parsed once.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::forward::path::PathPattern;
use crate::forward::template::Template;
use crate::invalid::InvalidArgument;

/// Longest destination, template, header or client identity name.
pub const MAX_NAME: usize = 64;
/// The longest timeout a destination may set, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 60_000;
/// The largest response a destination may allow, in bytes.
pub const MAX_RESPONSE_BYTES: u64 = 16 * 1024 * 1024;

/// An HTTP method a destination may allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Method {
    /// GET (no body is sent).
    #[serde(rename = "GET")]
    Get,
    /// POST.
    #[serde(rename = "POST")]
    Post,
    /// PUT.
    #[serde(rename = "PUT")]
    Put,
    /// PATCH.
    #[serde(rename = "PATCH")]
    Patch,
    /// DELETE.
    #[serde(rename = "DELETE")]
    Delete,
}

impl Method {
    /// Every method.
    pub const ALL: [Self; 5] = [Self::Get, Self::Post, Self::Put, Self::Patch, Self::Delete];

    /// The method as HTTP spells it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
        }
    }

    /// The method named `name` (upper case).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

/// How a template's body is encoded, and so how caller variables are escaped in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentType {
    /// `application/json`: variables inside string literals are JSON-escaped; outside them a
    /// variable must be a JSON number.
    Json,
    /// `application/x-www-form-urlencoded`: variables are percent-encoded.
    Form,
}

impl ContentType {
    /// The `Content-Type` header's value.
    #[must_use]
    pub fn header_value(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Form => "application/x-www-form-urlencoded",
        }
    }
}

/// One request template as proposed: its content type and body, with placeholders
/// (`{{card.number}}`, `{{card.exp_month}}`, `{{card.exp_year}}`, `{{var.NAME}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// How the body is encoded.
    pub content_type: ContentType,
    /// The body, with placeholders.
    pub body: String,
}

/// A destination as an admin proposes it. Every field is part of the approval: a change is a
/// new proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationSpec {
    /// The name callers use: 1 to 64 characters from `[a-z0-9._-]`, starting with a letter or
    /// digit.
    pub name: String,
    /// `https://host[:port][/prefix]`: no user info, query or fragment. Requests go to this
    /// URL followed by the call's path.
    pub base_url: String,
    /// The CA certificates (PEM) the processor's chain must lead to.
    pub trust_anchor_pem: String,
    /// If set, the hex SHA-256 of the processor's leaf certificate (DER): the chain must also
    /// be this exact certificate.
    #[serde(default)]
    pub pinned_sha256: Option<String>,
    /// If set, the name of a client certificate and key configured in `vaultd.toml`
    /// (`[forward.client_identities]`), presented to the processor (mutual TLS).
    #[serde(default)]
    pub client_identity: Option<String>,
    /// The methods callers may use.
    pub methods: BTreeSet<Method>,
    /// The paths callers may use, below the base URL: literal segments, or `*` for exactly one
    /// segment (`/v1/payments/*/capture`).
    pub path_patterns: Vec<String>,
    /// Request headers (lower case) a caller may set; the card never goes into one.
    #[serde(default)]
    pub request_headers: BTreeSet<String>,
    /// Response headers (lower case) returned to the caller, with the card masked.
    #[serde(default)]
    pub response_headers: BTreeSet<String>,
    /// The request templates, by name.
    pub templates: BTreeMap<String, TemplateSpec>,
    /// The whole forward's deadline (connect, send, answer), 1 to 60,000 ms.
    pub timeout_ms: u64,
    /// The largest answer body read, 1 byte to 16 MiB; a larger one is refused.
    pub max_response_bytes: u64,
}

/// Request headers no caller may set: the vault sets them, they change how the request is
/// framed, or a proxy or framework in front of the processor may read them as another path,
/// host or method. Names starting `proxy-` and `x-forwarded-` are refused too.
const RESERVED_REQUEST_HEADERS: [&str; 23] = [
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "accept-encoding",
    "proxy-authorization",
    "proxy-connection",
    "expect",
    "forwarded",
    "via",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-real-ip",
];

fn invalid(field: &'static str, problem: &'static str) -> InvalidArgument {
    InvalidArgument { field, problem }
}

/// True if `name` is 1 to [`MAX_NAME`] characters from `[a-z0-9._-]` and starts with a letter
/// or a digit.
#[must_use]
pub fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// True if `name` is a lower-case HTTP header name (an RFC 9110 token, lower case).
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b'!' | b'#' | b'$' | b'&' | b'\'' | b'*'
                )
                || matches!(b, b'+' | b'^' | b'`' | b'|' | b'~')
        })
}

impl DestinationSpec {
    /// Parses and checks a proposal's JSON.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming the field (`spec` if the JSON does not parse).
    pub fn from_json(json: &str) -> Result<Self, InvalidArgument> {
        let spec: Self = serde_json::from_str(json).map_err(|_| {
            invalid(
                "spec",
                "must be a destination spec in JSON with the documented fields and no others",
            )
        })?;
        spec.check()?;
        Ok(spec)
    }

    /// The spec as canonical JSON: fields in declaration order, sets and maps sorted, no
    /// whitespace. What is stored, approved and fingerprinted.
    #[must_use]
    pub fn canonical_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The fingerprint of `canonical_json`: `sha256:` and its hex SHA-256. It covers the URL,
    /// trust anchor, pin, client identity, methods, patterns, headers, templates and limits.
    #[must_use]
    pub fn fingerprint_of(canonical_json: &str) -> String {
        format!(
            "sha256:{}",
            hex_lower(&vault_crypto::sha256(canonical_json.as_bytes()))
        )
    }

    /// Checks every field.
    fn check(&self) -> Result<(), InvalidArgument> {
        // Names, the URL and the patterns reach the audit trail (forward records name the
        // destination, template and path): none may hold a card number.
        let texts = [
            ("name", Some(&self.name)),
            ("base_url", Some(&self.base_url)),
            ("client_identity", self.client_identity.as_ref()),
        ];
        for (field, text) in texts {
            if text.is_some_and(|t| crate::pan::contains_card_number(t)) {
                return Err(invalid(field, crate::pan::CARD_LIKE));
            }
        }
        if self
            .templates
            .keys()
            .any(|name| crate::pan::contains_card_number(name))
        {
            return Err(invalid("templates", crate::pan::CARD_LIKE));
        }
        if self
            .path_patterns
            .iter()
            .any(|pattern| crate::pan::contains_card_number(pattern))
        {
            return Err(invalid("path_patterns", crate::pan::CARD_LIKE));
        }
        if !is_name(&self.name) {
            return Err(invalid(
                "name",
                "must be 1 to 64 characters from a-z 0-9 . _ - starting with a letter or digit",
            ));
        }
        check_base_url(&self.base_url)?;
        if !self
            .trust_anchor_pem
            .contains("-----BEGIN CERTIFICATE-----")
        {
            return Err(invalid(
                "trust_anchor_pem",
                "must hold at least one PEM certificate",
            ));
        }
        if let Some(pin) = &self.pinned_sha256
            && (pin.len() != 64 || !pin.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        {
            return Err(invalid("pinned_sha256", "must be 64 lower-case hex digits"));
        }
        if let Some(identity) = &self.client_identity
            && !is_name(identity)
        {
            return Err(invalid(
                "client_identity",
                "must be 1 to 64 characters from a-z 0-9 . _ -",
            ));
        }
        if self.methods.is_empty() {
            return Err(invalid("methods", "must name at least one method"));
        }
        if self.path_patterns.is_empty() || self.path_patterns.len() > 64 {
            return Err(invalid("path_patterns", "must hold 1 to 64 patterns"));
        }
        for pattern in &self.path_patterns {
            PathPattern::parse(pattern)?;
        }
        for name in &self.request_headers {
            if !is_header_name(name) {
                return Err(invalid(
                    "request_headers",
                    "must be lower-case header names",
                ));
            }
            if RESERVED_REQUEST_HEADERS.contains(&name.as_str())
                || name.starts_with("proxy-")
                || name.starts_with("x-forwarded-")
            {
                return Err(invalid(
                    "request_headers",
                    "may not name a header the vault sets, one that frames the request or one \
                     that reroutes it",
                ));
            }
        }
        if self
            .response_headers
            .iter()
            .any(|name| !is_header_name(name))
        {
            return Err(invalid(
                "response_headers",
                "must be lower-case header names",
            ));
        }
        if self.templates.is_empty() || self.templates.len() > 64 {
            return Err(invalid("templates", "must hold 1 to 64 templates"));
        }
        for (name, template) in &self.templates {
            if !is_name(name) {
                return Err(invalid(
                    "templates",
                    "names must be 1 to 64 characters from a-z 0-9 . _ -",
                ));
            }
            Template::parse(template)?;
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout_ms) {
            return Err(invalid("timeout_ms", "must be 1 to 60000"));
        }
        if !(1..=MAX_RESPONSE_BYTES).contains(&self.max_response_bytes) {
            return Err(invalid("max_response_bytes", "must be 1 to 16777216"));
        }
        Ok(())
    }
}

/// Checks `https://host[:port][/prefix]`.
fn check_base_url(url: &str) -> Result<(), InvalidArgument> {
    let bad = || {
        invalid(
            "base_url",
            "must be https://host[:port][/path] with no user info, query, fragment, \
             percent-encoding or dot segments",
        )
    };
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            (host, Some(port))
        }
        _ => (authority, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        !v6.is_empty() && v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
            && !host.starts_with('.')
            && !host.contains("..")
    };
    if !host_ok {
        return Err(bad());
    }
    if let Some(port) = port
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad());
    }
    if !path.is_empty() {
        crate::forward::path::check_path(&format!("/{path}")).map_err(|_| bad())?;
    }
    Ok(())
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// An approved destination made ready to use: its spec, the fingerprint approved, and its
/// templates and path patterns parsed.
#[derive(Debug)]
pub struct Destination {
    spec: DestinationSpec,
    fingerprint: String,
    templates: BTreeMap<String, Template>,
    patterns: Vec<PathPattern>,
}

impl Destination {
    /// A destination from its stored canonical JSON and fingerprint.
    ///
    /// # Errors
    /// An [`InvalidArgument`] if the stored spec no longer parses or no longer matches its
    /// fingerprint (the store was altered).
    pub fn from_stored(spec_json: &str, fingerprint: &str) -> Result<Self, InvalidArgument> {
        if DestinationSpec::fingerprint_of(spec_json) != fingerprint {
            return Err(invalid(
                "destination",
                "the stored spec does not match its approved fingerprint",
            ));
        }
        let spec = DestinationSpec::from_json(spec_json)?;
        let templates = spec
            .templates
            .iter()
            .map(|(name, t)| Ok((name.clone(), Template::parse(t)?)))
            .collect::<Result<_, InvalidArgument>>()?;
        let patterns = spec
            .path_patterns
            .iter()
            .map(|p| PathPattern::parse(p))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            spec,
            fingerprint: fingerprint.to_owned(),
            templates,
            patterns,
        })
    }

    /// The approved spec.
    #[must_use]
    pub fn spec(&self) -> &DestinationSpec {
        &self.spec
    }

    /// The approved fingerprint.
    #[must_use]
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The approved template `name`.
    #[must_use]
    pub fn template(&self, name: &str) -> Option<&Template> {
        self.templates.get(name)
    }

    /// True if `path` (checked by [`crate::forward::path::check_path`]) matches an approved
    /// pattern.
    #[must_use]
    pub fn allows_path(&self, path: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(path))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spec() -> serde_json::Value {
        serde_json::json!({
            "name": "acme",
            "base_url": "https://psp.example:8443/api",
            "trust_anchor_pem": "-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n",
            "methods": ["POST"],
            "path_patterns": ["/v1/charges"],
            "templates": {"charge": {"content_type": "form", "body": "n={{card.number}}"}},
            "timeout_ms": 1000,
            "max_response_bytes": 1024
        })
    }

    fn refused(change: impl FnOnce(&mut serde_json::Value)) -> InvalidArgument {
        let mut spec = spec();
        change(&mut spec);
        DestinationSpec::from_json(&spec.to_string()).unwrap_err()
    }

    #[test]
    fn a_spec_is_checked_field_by_field_and_holds_no_card_number() {
        let ok = DestinationSpec::from_json(&spec().to_string()).unwrap();
        let json = ok.canonical_json();
        assert_eq!(DestinationSpec::from_json(&json).unwrap(), ok);
        assert!(DestinationSpec::fingerprint_of(&json).starts_with("sha256:"));
        assert_eq!(
            refused(|s| s["name"] = "4111111111111111".into()).field,
            "name"
        );
        assert_eq!(refused(|s| s["name"] = "Acme".into()).field, "name");
        assert_eq!(
            refused(|s| s["base_url"] = "http://psp.example".into()).field,
            "base_url"
        );
        assert_eq!(
            refused(|s| s["base_url"] = "https://user@psp.example".into()).field,
            "base_url"
        );
        assert_eq!(
            refused(|s| s["base_url"] = "https://psp.example/4111-1111-1111-1111".into()).field,
            "base_url"
        );
        assert_eq!(
            refused(|s| s["path_patterns"] = serde_json::json!(["/v1/4111111111111111"])).field,
            "path_patterns"
        );
        assert_eq!(
            refused(|s| s["templates"] = serde_json::json!({"4111111111111111":
                {"content_type": "form", "body": "n={{card.number}}"}}))
            .field,
            "templates"
        );
        for header in [
            "host",
            "transfer-encoding",
            "proxy-anything",
            "x-forwarded-host",
            "x-forwarded-prefix",
            "forwarded",
            "x-original-url",
            "x-http-method-override",
        ] {
            assert_eq!(
                refused(|s| s["request_headers"] = serde_json::json!([header])).field,
                "request_headers",
                "{header}"
            );
        }
        assert_eq!(
            refused(|s| s["timeout_ms"] = 60_001.into()).field,
            "timeout_ms"
        );
        assert_eq!(refused(|s| s["extra"] = 1.into()).field, "spec");
    }

    #[test]
    fn a_stored_spec_must_match_its_fingerprint() {
        let json = DestinationSpec::from_json(&spec().to_string())
            .unwrap()
            .canonical_json();
        let fingerprint = DestinationSpec::fingerprint_of(&json);
        assert!(Destination::from_stored(&json, &fingerprint).is_ok());
        let altered = json.replace("psp.example", "evil.example");
        assert!(Destination::from_stored(&altered, &fingerprint).is_err());
    }
}
