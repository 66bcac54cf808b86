//! The path a forward is sent to, below the destination's base URL, and the approved patterns
//! it must match. A path is refused rather than normalized: a server and the vault could
//! normalize differently, so anything a server might read as another path (`//`, `\`, `@`, dot
//! segments, their percent-encodings, a query or fragment) never leaves the vault.

use crate::invalid::InvalidArgument;
use crate::pan::{CARD_LIKE, contains_card_number};

/// The longest path, in bytes.
pub const MAX_PATH: usize = 1024;

const PROBLEM: &str = "must be an absolute path of letters, digits and - . _ ~ ! $ & ' ( ) * + , \
                       ; = : with no //, \\, @, query, fragment, placeholder, dot segment (also as \
                       `..;x` or `..%20`), or percent-encoded dot, slash, backslash, percent or \
                       non-ASCII byte";

/// True for the bytes a path may hold as they are (RFC 3986 `pchar` without `@` and
/// percent-encodings, and `/`).
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'/'
        )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Checks a path's syntax (see the module doc); patterns are checked with the same rule, `*`
/// being a plain character.
fn check_syntax(field: &'static str, path: &str) -> Result<(), InvalidArgument> {
    let bad = InvalidArgument {
        field,
        problem: PROBLEM,
    };
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || bytes.len() > MAX_PATH || path.contains("//") {
        return Err(bad);
    }
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let decoded = match (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) {
                (Some(high), Some(low)) => high * 16 + low,
                _ => return Err(bad),
            };
            // An encoded byte that could change which path a server reads, or that never
            // needed encoding (so a server could decode it to something else in context).
            // Bytes above ASCII are refused too: no processor path needs them, and an overlong
            // UTF-8 form (`%c0%ae`) is a dot to some servers.
            if decoded < 0x21 && decoded != b' '
                || matches!(decoded, b'.' | b'/' | b'\\' | b'%' | b'@' | b'?' | b'#')
                || decoded >= 0x7f
                || is_plain(decoded)
            {
                return Err(bad);
            }
            i += 3;
        } else if is_plain(b) {
            i += 1;
        } else {
            return Err(bad);
        }
    }
    if path.split('/').any(is_dot_like) {
        return Err(bad);
    }
    Ok(())
}

/// True for a segment some server may read as `.`, `..` or an empty segment: once its path
/// parameters (`;...`, which Tomcat, Jetty and Spring drop) and encoded spaces are taken away,
/// nothing but dots is left (`..;x`, `..%20`, `...`), or nothing at all (`;x`).
fn is_dot_like(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    let mut rest = segment.split(';').next().unwrap_or_default().as_bytes();
    loop {
        match rest {
            [] => return true,
            [b'.', tail @ ..] | [b'%', b'2', b'0', tail @ ..] => rest = tail,
            _ => return false,
        }
    }
}

/// Checks a forward's `path`: the syntax above and the card-number rule.
///
/// # Errors
/// An [`InvalidArgument`] naming `path`.
pub fn check_path(path: &str) -> Result<(), InvalidArgument> {
    check_syntax("path", path)?;
    if path.contains('*') {
        return Err(InvalidArgument {
            field: "path",
            problem: "must not contain *",
        });
    }
    if contains_card_number(path) {
        return Err(InvalidArgument {
            field: "path",
            problem: CARD_LIKE,
        });
    }
    Ok(())
}

/// An approved path pattern: literal segments, and `*` for exactly one non-empty segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Option<String>>,
}

impl PathPattern {
    /// Parses a pattern (`/v1/payments/*/capture`).
    ///
    /// # Errors
    /// An [`InvalidArgument`] naming `path_patterns`.
    pub fn parse(pattern: &str) -> Result<Self, InvalidArgument> {
        check_syntax("path_patterns", pattern)?;
        let segments = pattern
            .split('/')
            .skip(1)
            .map(|segment| match segment {
                "*" => Ok(None),
                s if s.contains('*') => Err(InvalidArgument {
                    field: "path_patterns",
                    problem: "* must be a whole segment",
                }),
                s => Ok(Some(s.to_owned())),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { segments })
    }

    /// True if `path` (already checked) matches: as many segments, each equal or under `*`.
    #[must_use]
    pub fn matches(&self, path: &str) -> bool {
        let mut segments = path.split('/').skip(1);
        for expected in &self.segments {
            match (expected, segments.next()) {
                (Some(literal), Some(segment)) if literal == segment => {}
                (None, Some(segment)) if !segment.is_empty() => {}
                _ => return false,
            }
        }
        segments.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_a_server_could_read_otherwise_are_refused() {
        for path in [
            "",
            "v1/charges",
            "//evil.example/x",
            "/v1//charges",
            "/v1/\\charges",
            "/v1/user@evil/charges",
            "/v1/../admin",
            "/v1/./charges",
            "/v1/..",
            "/v1/%2e%2e/admin",
            "/v1/%2E%2E/admin",
            "/v1/%2fadmin",
            "/v1/%5cadmin",
            "/v1/%252e%252e/admin",
            "/v1/%40evil",
            "/v1/%",
            "/v1/%zz",
            "/v1/%41",
            "/v1/charges?card=1",
            "/v1/charges#x",
            "/v1/{{card.number}}",
            "/v1/ch arges",
            "/v1/charg\u{e9}s",
            "/v1/charges/4111111111111111",
            "/v1/charges/4111-1111-1111-1111",
            "/v1/*",
            "/v1/payments/..;/capture",
            "/v1/payments/..;jsessionid=x/capture",
            "/v1/payments/;x/capture",
            "/v1/payments/..%20/capture",
            "/v1/payments/%20/capture",
            "/v1/payments/.../capture",
            "/v1/%c0%ae%c0%ae/admin",
            "/v1/%e2%80%a8",
            "/v1/%7f",
        ] {
            assert!(check_path(path).is_err(), "{path}");
        }
        for path in [
            "/",
            "/v1/charges",
            "/v1/payments/pay_123/capture",
            "/a/%20b",
            "/a:b/c=d",
            "/v1/charges/",
            "/v1/a;b=c/charges",
            "/v1/a..b/charges",
        ] {
            assert!(check_path(path).is_ok(), "{path}");
        }
    }

    #[test]
    fn patterns_match_whole_segments() {
        let pattern = PathPattern::parse("/v1/payments/*/capture").unwrap();
        assert!(pattern.matches("/v1/payments/pay_1/capture"));
        assert!(!pattern.matches("/v1/payments//capture"));
        assert!(!pattern.matches("/v1/payments/pay_1/capture/more"));
        assert!(!pattern.matches("/v1/payments/pay_1"));
        assert!(!pattern.matches("/v1/payments/a/b/capture"));
        let exact = PathPattern::parse("/v1/charges").unwrap();
        assert!(exact.matches("/v1/charges"));
        assert!(!exact.matches("/v1/charges/"));
        assert!(!exact.matches("/v1/chargesx"));
        assert!(PathPattern::parse("/v1/pay*").is_err());
        assert!(PathPattern::parse("/v1/../x").is_err());
    }
}
