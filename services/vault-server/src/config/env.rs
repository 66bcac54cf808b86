//! `VAULTD_*` environment variables that override settings of `vaultd.toml`, so one file can
//! serve every environment (a container sets what differs).
//!
//! The name is the setting's TOML path in upper case, `VAULTD_` in front and `__` between
//! the parts: `VAULTD_LISTEN`, `VAULTD_STORAGE__URL`, `VAULTD_TELEMETRY__METRICS_LISTEN`,
//! `VAULTD_LIMITS__TOKENIZE__PER_SECOND`, `VAULTD_PREVIOUS_KEK__0__KEY` (a number picks an
//! entry of an array). The value replaces the file's: a setting the file holds as a string
//! stays a string; any other is read as a TOML value (`20`, `true`, `["a.pem", "b.pem"]`) or,
//! failing that, as a string. Relative paths resolve against the file's directory, as the
//! file's own do. The command-line options `VAULTD_CONFIG`, `VAULTD_DATA_DIR` and
//! `VAULTD_LOG_FORMAT` are not settings.
//!
//! A variable that names a section the file format does not have is refused, naming the
//! variable; a key a section does not have is refused like a typo in the file. Values are
//! never printed: a database URL may carry a password.

use std::path::Path;

use toml::{Table, Value};

use super::ConfigError;

/// Every variable that overrides a setting starts with this.
pub const PREFIX: &str = "VAULTD_";

/// `VAULTD_` variables that are command-line options, not settings.
const OPTIONS: [&str; 3] = ["VAULTD_CONFIG", "VAULTD_DATA_DIR", "VAULTD_LOG_FORMAT"];

/// The top-level keys of `vaultd.toml`.
const TOP_LEVEL: [&str; 14] = [
    "listen",
    "storage",
    "tls",
    "kek",
    "previous_kek",
    "key_cache",
    "dek",
    "policy",
    "audit",
    "limits",
    "guard",
    "input",
    "identity",
    "telemetry",
];

/// Applies the overrides among `vars` to `table` (the parsed file `file`); returns the names of
/// the variables applied, sorted.
///
/// # Errors
/// [`ConfigError::Invalid`] naming a variable that names no section, or a path that cannot be
/// set (an index past an array's end, a value where the file has a table).
pub(super) fn apply(
    table: &mut Table,
    vars: impl IntoIterator<Item = (String, String)>,
    file: &Path,
) -> Result<Vec<String>, ConfigError> {
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX) && !OPTIONS.contains(&name.as_str()))
        .collect();
    vars.sort();
    for (name, raw) in vars {
        let path: Vec<String> = name
            .get(PREFIX.len()..)
            .unwrap_or_default()
            .split("__")
            .map(str::to_ascii_lowercase)
            .collect();
        let refused = |problem: &str| ConfigError::invalid(file, name.clone(), problem);
        let first = path.first().map(String::as_str).unwrap_or_default();
        if !TOP_LEVEL.contains(&first) || path.iter().any(String::is_empty) {
            return Err(refused(
                "names no setting: VAULTD_ then the setting's TOML path in upper case, parts \
                 joined by __ (VAULTD_STORAGE__URL)",
            ));
        }
        set(table, &path, &raw).map_err(refused)?;
        applied.push(name);
    }
    Ok(applied)
}

/// `message` with every double-quoted part emptied (`invalid type: string "…", expected u32`).
pub(super) fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// Sets `path` in `table` to `raw`, typed as the module doc says; a missing table on the way
/// is made.
fn set(table: &mut Table, path: &[String], raw: &str) -> Result<(), &'static str> {
    let Some((first, rest)) = path.split_first() else {
        return Err("names no setting");
    };
    if rest.is_empty() {
        let value = typed(table.get(first), raw);
        table.insert(first.clone(), value);
        return Ok(());
    }
    let next = table
        .entry(first.clone())
        .or_insert_with(|| Value::Table(Table::new()));
    set_in(next, rest, raw)
}

/// [`set`] below a value: a table, or an array whose entry the next part numbers.
fn set_in(value: &mut Value, path: &[String], raw: &str) -> Result<(), &'static str> {
    match value {
        Value::Table(table) => set(table, path, raw),
        Value::Array(items) => {
            let Some((index, rest)) = path.split_first() else {
                return Err("names no setting");
            };
            let index: usize = index
                .parse()
                .map_err(|_| "an array's entries are numbered")?;
            let item = items
                .get_mut(index)
                .ok_or("an array index past the entries the file has")?;
            if rest.is_empty() {
                *item = typed(Some(item), raw);
                Ok(())
            } else {
                set_in(item, rest, raw)
            }
        }
        _ => Err("names a setting inside a value that is not a table"),
    }
}

/// `raw` typed after the value it replaces: a string stays a string; anything else (or
/// nothing) is read as a TOML value, or as a string if it is not one.
fn typed(replaced: Option<&Value>, raw: &str) -> Value {
    if matches!(replaced, Some(Value::String(_))) {
        return Value::String(raw.to_owned());
    }
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn overrides_set_settings_by_path_typed_after_the_file() {
        let mut table: Table = toml::from_str(
            "listen = \"127.0.0.1:1\"\n[storage]\nurl = \"sqlite:a\"\n\
             [[previous_kek]]\nbackend = \"transit\"\nkey = \"old\"\n",
        )
        .unwrap();
        let applied = apply(
            &mut table,
            vars(&[
                ("VAULTD_LISTEN", "0.0.0.0:50051"),
                ("VAULTD_STORAGE__URL", "12"),
                ("VAULTD_STORAGE__MAX_CONNECTIONS", "20"),
                ("VAULTD_TELEMETRY__METRICS_LISTEN", "127.0.0.1:9464"),
                ("VAULTD_IDENTITY__CN_FALLBACK", "false"),
                ("VAULTD_PREVIOUS_KEK__0__KEY", "older"),
                ("VAULTD_CONFIG", "/etc/vaultd.toml"),
                ("OTHER", "x"),
            ]),
            Path::new("vaultd.toml"),
        )
        .unwrap();
        assert_eq!(applied.len(), 6);
        assert_eq!(table["listen"].as_str(), Some("0.0.0.0:50051"));
        assert_eq!(table["storage"]["url"].as_str(), Some("12"));
        assert_eq!(table["storage"]["max_connections"].as_integer(), Some(20));
        assert_eq!(
            table["telemetry"]["metrics_listen"].as_str(),
            Some("127.0.0.1:9464")
        );
        assert_eq!(table["identity"]["cn_fallback"].as_bool(), Some(false));
        assert_eq!(table["previous_kek"][0]["key"].as_str(), Some("older"));
    }

    #[test]
    fn a_variable_that_names_no_setting_is_refused_by_name_without_its_value() {
        for (name, value) in [
            ("VAULTD_STORGE__URL", "postgres://u:secret@db/v"),
            ("VAULTD_STORAGE____URL", "postgres://u:secret@db/v"),
            ("VAULTD_PREVIOUS_KEK__3__KEY", "secret"),
            ("VAULTD_PREVIOUS_KEK__X__KEY", "secret"),
            ("VAULTD_LISTEN__PORT", "secret"),
        ] {
            let mut table: Table =
                toml::from_str("listen = \"a\"\n[[previous_kek]]\nkey = \"k\"\n").unwrap();
            let err = apply(&mut table, vars(&[(name, value)]), Path::new("vaultd.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(name), "{err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
