//! What the `destination` commands print: text for people, and the `Serialize` structs their
//! JSON objects are made of (used by `json`). Field names follow `admin.proto`
//! (`DestinationVersion`); a field the vault left empty (not approved, not revoked) is `null`.

use serde::Serialize;
use serde_json::Value;
use vault_proto::v1::DestinationVersion;

use super::{Align, plural, shell_quote, table};

/// The `vaultctl destination approve` command line for version `id` with `fingerprint`, as a
/// second admin would type it once they have reviewed that version. `addr` is added when the
/// vault is not at the default address.
#[must_use]
pub fn approve_command(addr: Option<&str>, id: &str, fingerprint: &str) -> String {
    let addr = addr.map_or_else(String::new, |addr| format!("--addr {} ", shell_quote(addr)));
    format!(
        "vaultctl {addr}destination approve {} --fingerprint {} --reason 'REASON'",
        shell_quote(id),
        shell_quote(fingerprint)
    )
}

/// The version's fields, one per line, for those the vault filled in.
fn version_rows(version: &DestinationVersion) -> String {
    let rows = [
        ("id", &version.id),
        ("name", &version.name),
        ("fingerprint", &version.fingerprint),
        ("state", &version.state),
        ("proposed by", &version.proposed_by),
        ("proposed at", &version.proposed_at),
        ("approved by", &version.approved_by),
        ("approved at", &version.approved_at),
        ("revoked by", &version.revoked_by),
        ("revoked at", &version.revoked_at),
    ];
    rows.iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(label, value)| format!("{:<13}{value}\n", format!("{label}:")))
        .collect()
}

/// `destination propose`.
pub(super) fn proposed_text(version: &DestinationVersion, approve_command: &str) -> String {
    format!(
        "proposed destination {name}\n{rows}\n\
         Nothing is in force yet. A second admin, with a destinations.admin identity different \
         from the proposer's, must review it (`vaultctl destination list {quoted} --spec`) and \
         approve it within 7 days by running (with their own credentials, and their own reason \
         in place of REASON):\n\
         \n  {approve_command}\n",
        name = version.name,
        rows = version_rows(version),
        quoted = shell_quote(&version.name),
    )
}

/// `destination approve`.
pub(super) fn approved_text(version: &DestinationVersion) -> String {
    format!(
        "approved destination {name}: version {id} is {state}\n{rows}\
         Forwards to {name} use this version from now on; the version before it, if any, is \
         superseded.\n",
        name = version.name,
        id = version.id,
        state = version.state,
        rows = version_rows(version),
    )
}

/// `destination revoke`.
pub(super) fn revoked_text(name: &str, revoked: u64) -> String {
    format!(
        "revoked destination {name}: {revoked} {} revoked\nForwards to {name} are refused from \
         now on.\n",
        plural(revoked, "version", "versions")
    )
}

/// `destination list`: a table, then each spec if asked.
pub(super) fn list_text(name: Option<&str>, versions: &[DestinationVersion], spec: bool) -> String {
    if versions.is_empty() {
        return match name {
            Some(name) => format!("no versions of destination {name}\n"),
            None => "no destinations\n".to_owned(),
        };
    }
    let cell = |value: &String| {
        if value.is_empty() {
            "-".to_owned()
        } else {
            value.clone()
        }
    };
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|v| {
            [
                &v.name,
                &v.state,
                &v.id,
                &v.fingerprint,
                &v.proposed_by,
                &v.proposed_at,
                &v.approved_by,
                &v.approved_at,
                &v.revoked_by,
                &v.revoked_at,
            ]
            .map(cell)
            .to_vec()
        })
        .collect();
    let mut out = table(
        &[
            ("NAME", Align::Left),
            ("STATE", Align::Left),
            ("ID", Align::Left),
            ("FINGERPRINT", Align::Left),
            ("PROPOSED BY", Align::Left),
            ("PROPOSED AT", Align::Left),
            ("APPROVED BY", Align::Left),
            ("APPROVED AT", Align::Left),
            ("REVOKED BY", Align::Left),
            ("REVOKED AT", Align::Left),
        ],
        &rows,
    );
    if spec {
        for version in versions {
            let pretty = serde_json::from_str::<Value>(&version.spec_json)
                .ok()
                .and_then(|value| serde_json::to_string_pretty(&value).ok())
                .unwrap_or_else(|| version.spec_json.clone());
            out.push_str(&format!(
                "\nspec of {} version {} ({}, {}):\n{pretty}\n",
                version.name, version.id, version.state, version.fingerprint
            ));
        }
    }
    out
}

/// One version, for scripts. `spec` (the spec as a JSON value) only from `list --spec`.
#[derive(Serialize)]
pub(super) struct Version<'a> {
    id: &'a str,
    name: &'a str,
    fingerprint: &'a str,
    state: &'a str,
    proposed_by: Option<&'a str>,
    proposed_at: Option<&'a str>,
    approved_by: Option<&'a str>,
    approved_at: Option<&'a str>,
    revoked_by: Option<&'a str>,
    revoked_at: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<Value>,
}

impl<'a> Version<'a> {
    pub(super) fn new(version: &'a DestinationVersion, spec: bool) -> Self {
        let set = |value: &'a String| (!value.is_empty()).then_some(value.as_str());
        Self {
            id: &version.id,
            name: &version.name,
            fingerprint: &version.fingerprint,
            state: &version.state,
            proposed_by: set(&version.proposed_by),
            proposed_at: set(&version.proposed_at),
            approved_by: set(&version.approved_by),
            approved_at: set(&version.approved_at),
            revoked_by: set(&version.revoked_by),
            revoked_at: set(&version.revoked_at),
            spec: spec.then(|| {
                serde_json::from_str(&version.spec_json)
                    .unwrap_or_else(|_| Value::String(version.spec_json.clone()))
            }),
        }
    }
}

/// `destination propose`: the version and the command that approves it.
#[derive(Serialize)]
pub(super) struct Proposed<'a> {
    #[serde(flatten)]
    pub(super) version: Version<'a>,
    pub(super) approve_command: &'a str,
}

/// `destination revoke`.
#[derive(Serialize)]
pub(super) struct Revoked<'a> {
    pub(super) name: &'a str,
    pub(super) revoked: u64,
}

/// `destination list`.
#[derive(Serialize)]
pub(super) struct List<'a> {
    pub(super) name: Option<&'a str>,
    pub(super) versions: Vec<Version<'a>>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::Report;
    use super::*;
    use crate::cli::OutputFormat;

    fn version(state: &str) -> DestinationVersion {
        DestinationVersion {
            id: "d-7".into(),
            name: "acme".into(),
            fingerprint: "sha256:ab12".into(),
            state: state.into(),
            spec_json: r#"{"name":"acme","timeout_ms":10000}"#.into(),
            proposed_by: "spiffe://vault.test/admin-1".into(),
            proposed_at: "2026-03-01T12:00:00Z".into(),
            ..DestinationVersion::default()
        }
    }

    fn approved() -> DestinationVersion {
        DestinationVersion {
            approved_by: "spiffe://vault.test/admin-2".into(),
            approved_at: "2026-03-01T13:00:00Z".into(),
            ..version("in_force")
        }
    }

    #[test]
    fn a_proposal_says_who_must_approve_and_how() {
        let command = approve_command(None, "d-7", "sha256:ab12");
        assert_eq!(
            command,
            "vaultctl destination approve d-7 --fingerprint sha256:ab12 --reason 'REASON'"
        );
        assert_eq!(
            approve_command(Some("vault:443"), "it's", "sha256:ab12"),
            "vaultctl --addr vault:443 destination approve 'it'\\''s' --fingerprint sha256:ab12 \
             --reason 'REASON'"
        );
        let report = Report::DestinationProposed {
            version: version("proposed"),
            approve_command: command.clone(),
        };
        let text = report.to_text();
        assert!(
            text.starts_with(
                "proposed destination acme\n\
                 id:          d-7\n\
                 name:        acme\n\
                 fingerprint: sha256:ab12\n\
                 state:       proposed\n\
                 proposed by: spiffe://vault.test/admin-1\n\
                 proposed at: 2026-03-01T12:00:00Z\n\n"
            ),
            "{text}"
        );
        assert!(text.contains("different from the proposer's"), "{text}");
        assert!(text.ends_with(&format!("\n  {command}\n")), "{text}");
        assert_eq!(
            report.to_json().unwrap(),
            json!({
                "id": "d-7",
                "name": "acme",
                "fingerprint": "sha256:ab12",
                "state": "proposed",
                "proposed_by": "spiffe://vault.test/admin-1",
                "proposed_at": "2026-03-01T12:00:00Z",
                "approved_by": null,
                "approved_at": null,
                "revoked_by": null,
                "revoked_at": null,
                "approve_command": command,
            })
        );
    }

    #[test]
    fn approval_and_revocation() {
        let report = Report::DestinationApproved(approved());
        let text = report.to_text();
        assert!(
            text.starts_with("approved destination acme: version d-7 is in_force\n"),
            "{text}"
        );
        assert!(
            text.contains("approved by: spiffe://vault.test/admin-2\n"),
            "{text}"
        );
        assert!(!text.contains("revoked"), "{text}");
        let value = report.to_json().unwrap();
        assert_eq!(value["state"], "in_force");
        assert_eq!(value["approved_at"], "2026-03-01T13:00:00Z");
        assert_eq!(value.get("spec"), None);

        let report = Report::DestinationRevoked {
            name: "acme".into(),
            revoked: 2,
        };
        assert_eq!(
            report.to_text(),
            "revoked destination acme: 2 versions revoked\nForwards to acme are refused from \
             now on.\n"
        );
        assert_eq!(
            report.render(OutputFormat::Json).unwrap(),
            "{\"name\":\"acme\",\"revoked\":2}\n"
        );
    }

    #[test]
    fn the_list_is_a_table_and_specs_on_request() {
        let versions = vec![approved(), version("proposed")];
        let report = Report::Destinations {
            name: None,
            versions: versions.clone(),
            spec: false,
        };
        let text = report.to_text();
        assert_eq!(
            text,
            "NAME  STATE     ID   FINGERPRINT  PROPOSED BY                  PROPOSED AT           \
             APPROVED BY                  APPROVED AT           REVOKED BY  REVOKED AT\n\
             acme  in_force  d-7  sha256:ab12  spiffe://vault.test/admin-1  2026-03-01T12:00:00Z  \
             spiffe://vault.test/admin-2  2026-03-01T13:00:00Z  -           -\n\
             acme  proposed  d-7  sha256:ab12  spiffe://vault.test/admin-1  2026-03-01T12:00:00Z  \
             -                            -                     -           -\n"
        );
        assert!(!text.contains("timeout_ms"), "{text}");
        let value = report.to_json().unwrap();
        assert_eq!(value["name"], Value::Null);
        assert_eq!(value["versions"].as_array().map(Vec::len), Some(2));
        assert_eq!(value["versions"][0].get("spec"), None);

        let report = Report::Destinations {
            name: Some("acme".into()),
            versions,
            spec: true,
        };
        let text = report.to_text();
        assert!(
            text.contains(
                "\nspec of acme version d-7 (in_force, sha256:ab12):\n{\n  \"name\": \"acme\",\n  \
                 \"timeout_ms\": 10000\n}\n"
            ),
            "{text}"
        );
        let value = report.to_json().unwrap();
        assert_eq!(value["name"], "acme");
        assert_eq!(
            value["versions"][1]["spec"],
            json!({ "name": "acme", "timeout_ms": 10000 })
        );

        for (name, text) in [
            (None, "no destinations\n"),
            (Some("acme"), "no versions of destination acme\n"),
        ] {
            let report = Report::Destinations {
                name: name.map(str::to_owned),
                versions: vec![],
                spec: true,
            };
            assert_eq!(report.to_text(), text);
        }
    }
}
