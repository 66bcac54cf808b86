//! The command line: global connection and output options, and one subcommand per RPC of
//! `vault.v1.KeyAdminService`, `vault.v1.DestinationAdminService` and `vault.v1.AuditService`,
//! plus the offline `audit verify` and `audit trace`.

use std::path::PathBuf;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use vault_client::{ConnectionArgs, DEFAULT_ADDR, TlsFiles};

const ABOUT: &str = "Key and destination administration and the audit trail of the card vault \
(vault.v1.KeyAdminService, DestinationAdminService, AuditService) over mutual TLS";

const LONG_ABOUT: &str = "\
Key and destination administration and the audit trail of the card vault over mutual TLS:
vault.v1.KeyAdminService (status, keys, kek, shred), vault.v1.DestinationAdminService
(destination) and vault.v1.AuditService (audit export, audit public-key, audit prune).

Every call needs a client certificate whose identity has the permission the command names:
keys.admin for status, keys, kek and shred; destinations.admin for destination; audit.read or
audit.prune for audit. Each call is written to the vault's audit log, allowed or denied. Give
the certificate either as three files (--ca, --cert, --key) or as a `vaultd dev` data directory
and an identity name (--dev-dir, --identity), which picks DIR/pki/ca.pem, DIR/pki/NAME.pem and
DIR/pki/NAME.key. `audit verify` and `audit trace` work offline on export files and need no
certificate.";

const AFTER_HELP: &str = "\
Exit status:
  0  success
  1  the vault refused or failed the call (the gRPC code is printed, e.g. PERMISSION_DENIED,
     UNAVAILABLE, DEADLINE_EXCEEDED), a re-encryption or rewrap stopped before it finished
     (run the same command again to resume), or audit exports did not verify (audit verify,
     trace and prune print what is wrong)
  2  usage or configuration error: bad arguments, no client identity given, an unreadable or
     invalid certificate, key, spec or export file, a malformed address

Examples:
  vaultctl --dev-dir .vault-dev --identity admin-1 status
  vaultctl --dev-dir .vault-dev --identity admin-1 keys rotate merchant-1 --reason 'quarterly rotation'
  vaultctl --ca ca.pem --cert me.pem --key me.key --addr vault.internal:50051 \\
      --server-name vault.internal kek rewrap --reason 'KEK rotation CHG-1234'
  vaultctl --dev-dir .vault-dev --identity admin-1 destination propose acme.toml --reason 'onboard Acme'
  vaultctl audit trace tok_123 --public-key vault-audit.pub q4.jsonl";

/// `vaultctl`: the operators' client for the vault's key and destination administration and
/// its audit trail.
#[derive(Debug, Parser)]
#[command(
    name = "vaultctl",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Output format: text for people, json for scripts.
    ///
    /// json prints one JSON object on standard output; for re-encryption and rewrap only the
    /// final summary (progress goes to standard error either way).
    #[arg(
        long,
        global = true,
        value_name = "FORMAT",
        value_enum,
        default_value_t = OutputFormat::Text
    )]
    pub output: OutputFormat,
    /// Where the vault is and who this client is.
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed on standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text.
    Text,
    /// One JSON object.
    Json,
}

/// The commands, one RPC each.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the KEKs, the DEK lifecycle limits and the unwrapped-key cache (vault-wide).
    Status,
    /// Show, rotate or re-encrypt one merchant's keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Key-encryption key rotation: rewrap keys under the current KEK (vault-wide).
    #[command(subcommand)]
    Kek(KekCommand),
    /// Crypto-shred a merchant's keys, under dual control (two different admins).
    #[command(subcommand)]
    Shred(ShredCommand),
    /// Forward destinations, under dual control (needs `destinations.admin`).
    #[command(subcommand)]
    Destination(DestinationCommand),
    /// The audit trail: export it, fetch its public key, verify exports and trace a token
    /// offline, prune.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `vaultctl destination ...` (`vault.v1.DestinationAdminService`; every command needs
/// `destinations.admin`).
#[derive(Debug, Subcommand)]
pub enum DestinationCommand {
    /// Step 1 of 2: propose a destination (a new one, or a new version of one).
    ///
    /// FILE is the spec as TOML (a `.toml` file) or JSON (any other name); see
    /// docs/operations.md, "Destinations". `trust_anchor_file = "PATH"` (relative to FILE) is
    /// read into `trust_anchor_pem`. Nothing is in force until a different admin approves the
    /// printed id.
    Propose {
        /// The spec file (`.toml`, else JSON).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        reason: Reason,
    },
    /// Step 2 of 2: approve another admin's proposal; it replaces the version in force.
    ///
    /// Review the version first (`destination list NAME --spec`) and name its fingerprint: a
    /// version whose fingerprint is not the one given is not approved.
    Approve {
        /// The version id printed by `destination propose` (or shown by `destination list`).
        #[arg(value_name = "ID", value_parser = NonEmptyStringValueParser::new())]
        id: String,
        /// The fingerprint of the version reviewed (`sha256:...`).
        #[arg(long, value_name = "FINGERPRINT", value_parser = NonEmptyStringValueParser::new())]
        fingerprint: String,
        #[command(flatten)]
        reason: Reason,
    },
    /// Revoke every version of a destination: forwards to it are refused from now on.
    Revoke {
        /// The destination's name.
        #[arg(value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
        name: String,
        #[command(flatten)]
        reason: Reason,
    },
    /// List every version (of one destination, if named), oldest first, with its state.
    List {
        /// Only this destination's versions.
        #[arg(value_name = "NAME", value_parser = NonEmptyStringValueParser::new())]
        name: Option<String>,
        /// Also print each version's spec (JSON), to review a proposal before approving it.
        #[arg(long)]
        spec: bool,
    },
}

/// `vaultctl audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Export the audit trail for a time range as JSON lines (needs `audit.read`).
    ///
    /// The range is widened to whole checkpoints so that the file verifies on its own; the
    /// vault signs any head not yet signed first. Shows progress on standard error.
    Export {
        /// RFC 3339 start (e.g. 2026-11-01T00:00:00Z); default: the oldest record online.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// RFC 3339 end (exclusive); default: now.
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Fetch the public key checkpoints are signed with (needs `audit.read`).
    ///
    /// Keep it apart from the exports: `audit verify` trusts only the key you give it.
    PublicKey {
        /// The file to write (JSON).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verify exports offline (no vault, no database) against a public key file.
    ///
    /// Names every record or checkpoint that was edited, is missing, was inserted or
    /// reordered, or whose signature does not verify; exit code 1 if any. Several files (an
    /// archived export and a later one) are checked one by one and for gaps between them.
    Verify {
        /// The public key file (`audit public-key`).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// The export files.
        #[arg(required = true, value_name = "EXPORT")]
        files: Vec<PathBuf>,
    },
    /// Where did this card go? Every detokenize and forward of a token, from exports, offline.
    ///
    /// Verifies the exports first, exactly as `audit verify` does, and refuses (exit code 1,
    /// no trace) if anything is wrong. Then lists, oldest first, each detokenize and forward
    /// of the token: when, who, from where, why, the outcome, and for a forward the
    /// destination, fingerprint, template, method, path and what came back.
    Trace {
        /// The token.
        #[arg(value_name = "TOKEN", value_parser = NonEmptyStringValueParser::new())]
        token: String,
        /// The public key file (`audit public-key`).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
        /// Only the token of this merchant (token strings are unique per merchant only).
        #[arg(long, value_name = "ID", value_parser = NonEmptyStringValueParser::new())]
        merchant: Option<String>,
        /// The export files.
        #[arg(required = true, value_name = "EXPORT")]
        files: Vec<PathBuf>,
    },
    /// Remove records older than a cutoff that a verified export holds (needs `audit.prune`).
    ///
    /// Verifies the export offline first and sends nothing if it fails. The vault removes only
    /// what the export covers and nothing younger than its `[audit] online_days`, writes a
    /// prune checkpoint where each writer's chain now starts, and records the prune. Keep the
    /// export (until the `keep_until` in its header): the remainder and the export verify
    /// together with `audit verify`.
    Prune {
        /// RFC 3339: records older than this may go.
        #[arg(long, value_name = "TIME")]
        before: String,
        /// The export (made without --from) that holds what goes.
        #[arg(long, value_name = "FILE")]
        export: PathBuf,
        /// The public key file to verify it with (`audit public-key`).
        #[arg(long, value_name = "FILE")]
        public_key: PathBuf,
    },
}

/// `vaultctl keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List a merchant's key versions, and any shred.
    ///
    /// One row per key: purpose, version, the KEK that wraps it, uses, tokens, creation time;
    /// then whether the merchant is shredded or has a shred awaiting approval.
    Show {
        /// The merchant id.
        merchant: String,
    },
    /// Start a new DEK version for the merchant now.
    ///
    /// New tokens are encrypted under it; older versions still decrypt until `keys reencrypt`
    /// moves their tokens.
    Rotate {
        /// The merchant id.
        merchant: String,
        #[command(flatten)]
        reason: Reason,
    },
    /// Move the merchant's tokens from older DEK versions to the newest one.
    ///
    /// Shows progress on standard error. Resumable: if it stops, run it again and it continues.
    Reencrypt {
        /// The merchant id.
        merchant: String,
        #[command(flatten)]
        reason: Reason,
    },
}

/// `vaultctl kek ...`.
#[derive(Debug, Subcommand)]
pub enum KekCommand {
    /// Rewrap every key not yet under the current KEK.
    ///
    /// No card number is decrypted. Shows progress on standard error. Resumable: if it stops,
    /// run it again and it continues.
    Rewrap {
        #[command(flatten)]
        reason: Reason,
    },
}

/// `vaultctl shred ...`.
#[derive(Debug, Subcommand)]
pub enum ShredCommand {
    /// Step 1 of 2: ask to destroy every key of the merchant.
    ///
    /// Nothing is destroyed until a different admin approves; the request expires after 24
    /// hours.
    Request {
        /// The merchant id.
        merchant: String,
        #[command(flatten)]
        reason: Reason,
    },
    /// Step 2 of 2: approve another admin's shred request.
    ///
    /// The merchant's keys are destroyed at once: its tokens can never be detokenized again,
    /// and it cannot tokenize again.
    Approve {
        /// The merchant id.
        merchant: String,
        /// The request id printed by `shred request` (or shown by `keys show`).
        #[arg(long, value_name = "ID", value_parser = NonEmptyStringValueParser::new())]
        request_id: String,
        #[command(flatten)]
        reason: Reason,
    },
}

/// The audited reason every changing command needs.
#[derive(Debug, Clone, Args)]
pub struct Reason {
    /// Why, for the audit log: 1 to 256 printable characters, never a card number.
    #[arg(long = "reason", value_name = "TEXT", value_parser = NonEmptyStringValueParser::new())]
    pub text: String,
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    const ENV: [&str; 7] = [
        "VAULTCTL_ADDR",
        "VAULTCTL_CA",
        "VAULTCTL_CERT",
        "VAULTCTL_KEY",
        "VAULTCTL_DEV_DIR",
        "VAULTCTL_IDENTITY",
        "VAULTCTL_SERVER_NAME",
    ];

    /// Parses `args` after `vaultctl`, refusing to run if a VAULTCTL_* variable could leak in.
    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        for var in ENV {
            assert!(
                std::env::var_os(var).is_none(),
                "unset {var} to run these tests"
            );
        }
        Cli::try_parse_from(std::iter::once("vaultctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dev_dir_and_identity_resolve_to_the_three_pki_files() {
        let cli = parse(&[
            "--dev-dir",
            "/srv/.vault-dev",
            "--identity",
            "admin-1",
            "status",
        ])
        .unwrap();
        assert_eq!(
            cli.connection.tls_files().unwrap(),
            TlsFiles {
                ca: Path::new("/srv/.vault-dev/pki/ca.pem").to_owned(),
                cert: Path::new("/srv/.vault-dev/pki/admin-1.pem").to_owned(),
                key: Path::new("/srv/.vault-dev/pki/admin-1.key").to_owned(),
            }
        );
        assert!(matches!(cli.command, Command::Status));
    }

    #[test]
    fn global_options_may_follow_the_subcommand() {
        let cli = parse(&[
            "keys",
            "show",
            "merchant-1",
            "--dev-dir",
            "d",
            "--identity",
            "admin-2",
            "--output",
            "json",
            "--addr",
            "vault:443",
            "--timeout-secs",
            "5",
        ])
        .unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        assert_eq!(cli.connection.addr, "vault:443");
        assert_eq!(cli.connection.timeout_secs, 5);
        assert_eq!(
            cli.connection.tls_files().unwrap().key,
            Path::new("d/pki/admin-2.key")
        );
        match cli.command {
            Command::Keys(KeysCommand::Show { merchant }) => assert_eq!(merchant, "merchant-1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn explicit_files_are_used_as_given_with_the_defaults() {
        let cli = parse(&[
            "--ca", "c.pem", "--cert", "me.pem", "--key", "me.key", "status",
        ])
        .unwrap();
        assert_eq!(
            cli.connection.tls_files().unwrap(),
            TlsFiles {
                ca: "c.pem".into(),
                cert: "me.pem".into(),
                key: "me.key".into(),
            }
        );
        assert_eq!(cli.connection.addr, DEFAULT_ADDR);
        assert_eq!(cli.connection.server_name, "localhost");
        assert_eq!(cli.connection.timeout_secs, 30);
        assert_eq!(cli.output, OutputFormat::Text);
    }

    #[test]
    fn both_identity_forms_together_are_refused() {
        for extra in [["--dev-dir", "d"], ["--identity", "admin-1"]] {
            let mut args = vec!["--ca", "c.pem", "--cert", "me.pem", "--key", "me.key"];
            args.extend(extra);
            args.push("status");
            let err = parse(&args).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{args:?}: {err}");
        }
        let err = parse(&[
            "--dev-dir",
            "d",
            "--identity",
            "admin-1",
            "--cert",
            "me.pem",
            "--ca",
            "c.pem",
            "--key",
            "k",
            "status",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict, "{err}");
    }

    #[test]
    fn half_an_identity_form_is_refused() {
        for args in [
            &["--dev-dir", "d", "status"][..],
            &["--identity", "admin-1", "status"],
            &["--ca", "c.pem", "--cert", "me.pem", "status"],
            &["--key", "me.key", "status"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::MissingRequiredArgument,
                "{args:?}: {err}"
            );
        }
    }

    #[test]
    fn no_identity_at_all_is_a_config_error() {
        let cli = parse(&["status"]).unwrap();
        let err = crate::Error::from(cli.connection.tls_files().unwrap_err());
        assert!(matches!(err, crate::Error::Config(_)), "{err:?}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn identity_names_cannot_leave_the_pki_folder() {
        for name in ["../ca", "", ".."] {
            let cli = parse(&["--dev-dir", "d", "--identity", name, "status"]).unwrap();
            assert!(cli.connection.tls_files().is_err(), "{name:?}");
        }
    }

    #[test]
    fn changing_commands_need_a_reason() {
        for args in [
            &["keys", "rotate", "m-1"][..],
            &["keys", "reencrypt", "m-1"],
            &["kek", "rewrap"],
            &["shred", "request", "m-1"],
            &["shred", "approve", "m-1", "--request-id", "r-1"],
            &["destination", "propose", "acme.toml"],
            &[
                "destination",
                "approve",
                "d-1",
                "--fingerprint",
                "sha256:ab12",
            ],
            &["destination", "revoke", "acme"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::MissingRequiredArgument,
                "{args:?}: {err}"
            );
            assert!(err.to_string().contains("--reason"), "{err}");
        }
        let err = parse(&["kek", "rewrap", "--reason", ""]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue, "{err}");
    }

    #[test]
    fn changing_commands_parse_their_arguments() {
        let cli = parse(&[
            "shred",
            "approve",
            "m-1",
            "--request-id",
            "r-1",
            "--reason",
            "ticket 42",
        ])
        .unwrap();
        match cli.command {
            Command::Shred(ShredCommand::Approve {
                merchant,
                request_id,
                reason,
            }) => {
                assert_eq!(merchant, "m-1");
                assert_eq!(request_id, "r-1");
                assert_eq!(reason.text, "ticket 42");
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["shred", "approve", "m-1", "--reason", "r"]).is_err());
        assert!(parse(&["keys", "rotate", "--reason", "r"]).is_err());
    }

    #[test]
    fn destination_commands_parse_their_arguments() {
        let cli = parse(&[
            "destination",
            "propose",
            "specs/acme.toml",
            "--reason",
            "onboard",
        ])
        .unwrap();
        match cli.command {
            Command::Destination(DestinationCommand::Propose { file, reason }) => {
                assert_eq!(file, Path::new("specs/acme.toml"));
                assert_eq!(reason.text, "onboard");
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&[
            "destination",
            "approve",
            "d-1",
            "--fingerprint",
            "sha256:ab12",
            "--reason",
            "ok",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Destination(DestinationCommand::Approve { id, fingerprint, .. })
                if id == "d-1" && fingerprint == "sha256:ab12"
        ));
        assert!(parse(&["destination", "approve", "d-1", "--reason", "ok"]).is_err());
        let cli = parse(&["destination", "list", "--spec"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Destination(DestinationCommand::List {
                name: None,
                spec: true
            })
        ));
        let cli = parse(&["destination", "list", "acme", "--output", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Destination(DestinationCommand::List { name: Some(n), spec: false })
                if n == "acme"
        ));
        assert!(
            parse(&[
                "destination",
                "approve",
                "",
                "--fingerprint",
                "f",
                "--reason",
                "r"
            ])
            .is_err()
        );
        assert!(parse(&["destination", "revoke", "--reason", "r"]).is_err());
    }

    #[test]
    fn audit_trace_takes_a_token_a_key_and_exports() {
        let cli = parse(&[
            "audit",
            "trace",
            "tok_1",
            "--public-key",
            "k.pub",
            "--merchant",
            "m-1",
            "a.jsonl",
            "b.jsonl",
        ])
        .unwrap();
        match cli.command {
            Command::Audit(AuditCommand::Trace {
                token,
                public_key,
                merchant,
                files,
            }) => {
                assert_eq!(token, "tok_1");
                assert_eq!(public_key, Path::new("k.pub"));
                assert_eq!(merchant.as_deref(), Some("m-1"));
                assert_eq!(files, [Path::new("a.jsonl"), Path::new("b.jsonl")]);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["audit", "trace", "tok_1", "a.jsonl", "--public-key", "k"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Audit(AuditCommand::Trace { merchant: None, .. })
        ));
        for args in [
            &["audit", "trace", "tok_1", "--public-key", "k"][..],
            &["audit", "trace", "tok_1", "a.jsonl"],
            &["audit", "trace", "", "a.jsonl", "--public-key", "k"],
        ] {
            assert_eq!(parse(args).unwrap_err().exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn usage_errors_exit_with_two() {
        let err = parse(&["keys", "rotate", "m-1"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["--timeout-secs", "0", "status"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn every_option_has_help_text() {
        fn check(cmd: &clap::Command, path: &str) {
            for arg in cmd.get_arguments() {
                if arg.get_id() == "help" || arg.get_id() == "version" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{path}: {} has no help",
                    arg.get_id()
                );
            }
            for sub in cmd.get_subcommands() {
                assert!(sub.get_about().is_some(), "{path} {}", sub.get_name());
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Cli::command(), "vaultctl");
    }
}
