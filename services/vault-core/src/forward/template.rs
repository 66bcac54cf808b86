//! Request templates: the body a forward sends, with the card and the caller's variables put
//! in by the vault. Placeholders: `{{card.number}}`, `{{card.exp_month}}` (two digits),
//! `{{card.exp_year}}` (four digits), `{{var.NAME}}` (a caller variable, `NAME` from
//! `[a-z][a-z0-9_]*`). Templates exist only as part of an approved destination, and only
//! bodies have placeholders, so the card can only go where two admins approved.
//!
//! Caller variables are escaped for the body's content type: JSON-escaped inside a JSON
//! string, a JSON number outside one (anything else is refused), percent-encoded in a form.
//! A variable that holds a card number is refused.

use std::collections::{BTreeMap, BTreeSet};

use zeroize::Zeroizing;

use crate::error::VaultError;
use crate::forward::spec::{ContentType, TemplateSpec};
use crate::invalid::InvalidArgument;
use crate::pan::{CARD_LIKE, contains_card_number};

/// The longest variable value, in bytes.
pub const MAX_VARIABLE: usize = 1024;
/// The most variables a template may use.
pub const MAX_VARIABLES: usize = 32;

/// A card field a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CardField {
    Number,
    ExpMonth,
    ExpYear,
}

/// Where a variable sits, and so how it is escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    JsonString,
    JsonValue,
    Form,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Card(CardField),
    Var(String, Context),
}

/// The card values a template may use.
pub struct CardValues<'a> {
    /// The card number, digits only.
    pub number: &'a str,
    /// The expiry, if the token has one: month (1 to 12) and four-digit year.
    pub expiry: Option<(u8, u16)>,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    content_type: ContentType,
    parts: Vec<Part>,
}

fn invalid(problem: &'static str) -> InvalidArgument {
    InvalidArgument {
        field: "templates",
        problem,
    }
}

fn is_variable_name(name: &str) -> bool {
    name.len() <= 32
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Template {
    /// Parses a template and checks that it renders to a well-formed body.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `templates`.
    pub fn parse(spec: &TemplateSpec) -> Result<Self, InvalidArgument> {
        if spec.body.len() > 64 * 1024 {
            return Err(invalid("a body must be at most 64 KiB"));
        }
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = spec.body.as_str();
        let mut in_string = false;
        let mut escaped = false;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("{{") {
                let (name, tail) = after
                    .split_once("}}")
                    .ok_or_else(|| invalid("a {{ must close with }}"))?;
                let part = match name {
                    "card.number" => Part::Card(CardField::Number),
                    "card.exp_month" => Part::Card(CardField::ExpMonth),
                    "card.exp_year" => Part::Card(CardField::ExpYear),
                    var => {
                        let name = var
                            .strip_prefix("var.")
                            .filter(|n| is_variable_name(n))
                            .ok_or_else(|| {
                                invalid(
                                    "placeholders are card.number, card.exp_month, \
                                     card.exp_year and var.NAME",
                                )
                            })?;
                        let context = match (spec.content_type, in_string) {
                            (ContentType::Json, true) => Context::JsonString,
                            (ContentType::Json, false) => Context::JsonValue,
                            (ContentType::Form, _) => Context::Form,
                        };
                        Part::Var(name.to_owned(), context)
                    }
                };
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(part);
                escaped = false;
                rest = tail;
                continue;
            }
            let Some(c) = rest.chars().next() else { break };
            if spec.content_type == ContentType::Json {
                match (in_string, escaped, c) {
                    (true, true, _) => escaped = false,
                    (true, false, '\\') => escaped = true,
                    (_, false, '"') => in_string = !in_string,
                    _ => {}
                }
            }
            text.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        let template = Self {
            content_type: spec.content_type,
            parts,
        };
        if template.variables().len() > MAX_VARIABLES {
            return Err(invalid("a template may use at most 32 variables"));
        }
        template.check_sample()?;
        Ok(template)
    }

    /// Renders sample values and checks the result is a well-formed body of its type.
    fn check_sample(&self) -> Result<(), InvalidArgument> {
        let variables = self
            .variables()
            .into_iter()
            .map(|name| (name.to_owned(), "1".to_owned()))
            .collect();
        let card = CardValues {
            number: "4111111111111111",
            expiry: Some((12, 2030)),
        };
        let body = self
            .render(&card, &variables)
            .map_err(|_| invalid("a template must render"))?;
        match self.content_type {
            ContentType::Json => {
                serde_json::from_slice::<serde_json::Value>(&body)
                    .map_err(|_| invalid("a json template must render to one JSON value"))?;
            }
            ContentType::Form => {
                let text = std::str::from_utf8(&body)
                    .map_err(|_| invalid("a form template must be text"))?;
                if text.is_empty() || text.split('&').any(|pair| !pair.contains('=')) {
                    return Err(invalid(
                        "a form template must be name=value pairs joined by &",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The body's content type.
    #[must_use]
    pub fn content_type(&self) -> ContentType {
        self.content_type
    }

    /// The variables the template uses.
    #[must_use]
    pub fn variables(&self) -> BTreeSet<&str> {
        self.parts
            .iter()
            .filter_map(|part| match part {
                Part::Var(name, _) => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Checks a caller's variables: exactly the template's, each at most [`MAX_VARIABLE`]
    /// bytes and free of card numbers.
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `variables`.
    pub fn check_variables(
        &self,
        variables: &BTreeMap<String, String>,
    ) -> Result<(), InvalidArgument> {
        let bad = |problem| InvalidArgument {
            field: "variables",
            problem,
        };
        let used = self.variables();
        if variables.keys().any(|name| !used.contains(name.as_str())) {
            return Err(bad("names a variable the template does not use"));
        }
        if used.iter().any(|name| !variables.contains_key(*name)) {
            return Err(bad("lacks a variable the template uses"));
        }
        for value in variables.values() {
            if value.len() > MAX_VARIABLE {
                return Err(bad("a value must be at most 1024 bytes"));
            }
            if contains_card_number(value) {
                return Err(bad(CARD_LIKE));
            }
        }
        Ok(())
    }

    /// Renders the body: the card values and the variables (already checked by
    /// [`Template::check_variables`]), each escaped for where it sits.
    ///
    /// # Errors
    /// [`VaultError::InvalidArgument`] (`variables`) for a variable outside a JSON string that
    /// is not a JSON number; [`VaultError::FailedPrecondition`] if the template needs an expiry
    /// the token has none of.
    pub fn render(
        &self,
        card: &CardValues<'_>,
        variables: &BTreeMap<String, String>,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let mut body = Zeroizing::new(Vec::with_capacity(256));
        let no_expiry = || {
            VaultError::FailedPrecondition(
                "the template uses the card's expiry and the token has none",
            )
        };
        for part in &self.parts {
            match part {
                Part::Text(text) => body.extend_from_slice(text.as_bytes()),
                Part::Card(CardField::Number) => body.extend_from_slice(card.number.as_bytes()),
                Part::Card(CardField::ExpMonth) => {
                    let (month, _) = card.expiry.ok_or_else(no_expiry)?;
                    body.extend_from_slice(format!("{month:02}").as_bytes());
                }
                Part::Card(CardField::ExpYear) => {
                    let (_, year) = card.expiry.ok_or_else(no_expiry)?;
                    body.extend_from_slice(format!("{year:04}").as_bytes());
                }
                Part::Var(name, context) => {
                    let value = variables.get(name).map_or("", String::as_str);
                    escape_into(&mut body, value, *context)?;
                }
            }
        }
        Ok(body)
    }
}

/// True if `value` is a JSON number.
fn is_json_number(value: &str) -> bool {
    let digits = value.strip_prefix('-').unwrap_or(value);
    let (int, frac) = digits
        .split_once('.')
        .map_or((digits, None), |(i, f)| (i, Some(f)));
    let int_ok = int == "0"
        || (!int.is_empty() && !int.starts_with('0') && int.bytes().all(|b| b.is_ascii_digit()));
    int_ok && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

fn escape_into(body: &mut Vec<u8>, value: &str, context: Context) -> Result<(), VaultError> {
    match context {
        Context::JsonValue => {
            if !is_json_number(value) {
                return Err(InvalidArgument {
                    field: "variables",
                    problem: "a variable outside a JSON string must be a JSON number",
                }
                .into());
            }
            body.extend_from_slice(value.as_bytes());
        }
        Context::JsonString => {
            for c in value.chars() {
                match c {
                    '"' => body.extend_from_slice(b"\\\""),
                    '\\' => body.extend_from_slice(b"\\\\"),
                    c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                        body.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
                    }
                    c => {
                        let mut buf = [0; 4];
                        body.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
        }
        Context::Form => {
            for b in value.bytes() {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                    body.push(b);
                } else {
                    body.extend_from_slice(format!("%{b:02X}").as_bytes());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(body: &str) -> Result<Template, InvalidArgument> {
        Template::parse(&TemplateSpec {
            content_type: ContentType::Json,
            body: body.to_owned(),
        })
    }

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const CARD: CardValues<'static> = CardValues {
        number: "4242424242424242",
        expiry: Some((7, 2031)),
    };

    #[test]
    fn json_variables_cannot_break_out_of_their_place() {
        let t = json(
            r#"{"card":{"number":"{{card.number}}","exp":"{{card.exp_month}}/{{card.exp_year}}"},"amount":{{var.amount}},"order":"{{var.order}}"}"#,
        )
        .unwrap();
        let v = vars(&[("amount", "1000"), ("order", "a\",\"number\":\"x\\")]);
        t.check_variables(&v).unwrap();
        let body = t.render(&CARD, &v).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["card"]["number"], "4242424242424242");
        assert_eq!(parsed["card"]["exp"], "07/2031");
        assert_eq!(parsed["amount"], 1000);
        assert_eq!(parsed["order"], "a\",\"number\":\"x\\");
        let injected = vars(&[("amount", "1,\"x\":1"), ("order", "o")]);
        assert!(t.render(&CARD, &injected).is_err());
    }

    #[test]
    fn form_variables_are_percent_encoded() {
        let t = Template::parse(&TemplateSpec {
            content_type: ContentType::Form,
            body: "number={{card.number}}&amount={{var.amount}}&note={{var.note}}".into(),
        })
        .unwrap();
        let body = t
            .render(&CARD, &vars(&[("amount", "10"), ("note", "a&number=1 2")]))
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "number=4242424242424242&amount=10&note=a%26number%3D1%202"
        );
    }

    #[test]
    fn variables_are_exactly_the_templates_and_hold_no_card() {
        let t = json(r#"{"n":"{{card.number}}","o":"{{var.order}}"}"#).unwrap();
        assert!(t.check_variables(&vars(&[])).is_err());
        assert!(
            t.check_variables(&vars(&[("order", "1"), ("x", "2")]))
                .is_err()
        );
        assert!(
            t.check_variables(&vars(&[("order", "4111 1111 1111 1111")]))
                .is_err()
        );
        assert!(t.check_variables(&vars(&[("order", "ord_123")])).is_ok());
    }

    #[test]
    fn malformed_templates_are_refused() {
        assert!(json(r#"{"n":"{{card.cvc}}"}"#).is_err());
        assert!(json(r#"{"n":"{{card.number}"}"#).is_err());
        assert!(json(r#"{"n":{{card.number}}"#).is_err());
        assert!(json(r#"{"n":"{{var.Bad}}"}"#).is_err());
        assert!(json(r#"{"n":"{{ card.number }}"}"#).is_err());
        let no_expiry = CardValues {
            number: "4242424242424242",
            expiry: None,
        };
        let t = json(r#"{"m":"{{card.exp_month}}"}"#).unwrap();
        assert!(matches!(
            t.render(&no_expiry, &vars(&[])),
            Err(VaultError::FailedPrecondition(_))
        ));
    }
}
