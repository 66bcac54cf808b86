//! Configuration changed without a restart, and checked before one: SIGHUP swaps the policy
//! (recorded in the trail with the new digest), a policy file that fails to parse keeps the
//! one in force; `vaultd check-config` refuses a bad file naming the setting; `VAULTD_*`
//! variables override the file.

use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::harness::*;

#[tokio::test]
async fn sighup_swaps_the_policy_and_the_trail_records_it() {
    let vault = TestVault::start().await;
    let mut gateway = vault.client("gateway").await;
    let mut payments = vault.client("payments").await;
    let pan = "4000056655665556";
    let token = vault.tokenize_at(&vault.addr, "m1", pan).await;
    let refused = payments
        .tokenize(tokenize_request("m1", "5555555555554444"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    // The payments service gains tokenize and loses detokenize; nothing else changes.
    let policy = POLICY.replace(
        "operations = [\"detokenize\", \"metadata\", \"forward\"]",
        "operations = [\"tokenize\", \"metadata\"]",
    );
    assert_ne!(policy, POLICY);
    std::fs::write(vault.dir.path().join("policy.toml"), &policy).unwrap();
    sighup(&vault);
    assert!(
        wait_for_log(&vault, "policy reloaded").await,
        "{}",
        vault.logs()
    );
    payments
        .tokenize(tokenize_request("m1", "5555555555554444"))
        .await
        .unwrap();
    let refused = payments
        .detokenize(detokenize_request("m1", &token))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    gateway
        .tokenize(tokenize_request("m1", "378282246310005"))
        .await
        .unwrap();

    // A file that does not parse keeps the policy in force, and the log says why.
    std::fs::write(
        vault.dir.path().join("policy.toml"),
        "[[caller]\nidentity = ",
    )
    .unwrap();
    sighup(&vault);
    assert!(
        wait_for_log(
            &vault,
            "policy not reloaded; the previous policy stays in force"
        )
        .await,
        "{}",
        vault.logs()
    );
    payments
        .tokenize(tokenize_request("m1", "6011111111111117"))
        .await
        .unwrap();

    let db = vault.db_path();
    let _dir = vault.stop();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT caller, outcome, detail FROM audit_log WHERE operation = 'policy.reload' \
         ORDER BY rowid",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let was = hex::encode(Sha256::digest(POLICY.as_bytes()));
    let now = hex::encode(Sha256::digest(policy.as_bytes()));
    assert_eq!(
        rows,
        [
            (
                "vaultd".to_owned(),
                "success".to_owned(),
                format!("policy sha256:{now} in force (was sha256:{was})")
            ),
            (
                "vaultd".to_owned(),
                "failed_precondition".to_owned(),
                format!("policy file refused; sha256:{now} stays in force")
            ),
        ]
    );
    assert_pci_fields(&db);
}

/// A TLS reload is recorded in the trail: SIGHUP with the files' digests, a refused file with
/// outcome `failed_precondition` (the settings in force stay, and calls go on).
#[tokio::test]
async fn tls_reloads_are_recorded_with_the_digests_in_force() {
    let vault = TestVault::start().await;
    let pki = vault.dir.path().join("pki");
    let digest = |name: &str| hex::encode(Sha256::digest(std::fs::read(pki.join(name)).unwrap()));
    let (cert, ca) = (digest("server.pem"), digest("ca.pem"));
    sighup(&vault);
    assert!(
        wait_for_log(&vault, "tls settings reloaded").await,
        "{}",
        vault.logs()
    );

    // A certificate file that no longer parses: refused, and the old settings stay.
    let good = std::fs::read(pki.join("server.pem")).unwrap();
    std::fs::write(pki.join("server.pem"), "not a certificate").unwrap();
    let broken = hex::encode(Sha256::digest(b"not a certificate"));
    sighup(&vault);
    assert!(
        wait_for_log(&vault, "tls settings not reloaded").await,
        "{}",
        vault.logs()
    );
    let mut gateway = vault.client("gateway").await;
    gateway
        .tokenize(tokenize_request("m1", "4000056655665556"))
        .await
        .unwrap();
    std::fs::write(pki.join("server.pem"), good).unwrap();

    let db = vault.db_path();
    let _dir = vault.stop();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT caller, outcome, resource, detail FROM audit_log WHERE operation = 'tls.reload' \
         ORDER BY rowid",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let files = |cert: &str| format!("cert sha256:{cert} client_ca sha256:{ca} crls none");
    let row = |outcome: &str, detail: String| {
        (
            "vaultd".to_owned(),
            outcome.to_owned(),
            "tls".to_owned(),
            detail,
        )
    };
    assert_eq!(
        rows,
        [
            row(
                "success",
                format!("sighup: {}; 0 connections closed", files(&cert))
            ),
            row(
                "failed_precondition",
                format!(
                    "tls files refused; the previous settings stay in force (on disk: {})",
                    files(&broken)
                )
            ),
        ]
    );
    assert_pci_fields(&db);
}

/// Runs `vaultd check-config` on `dir/vaultd.toml` with `env` added.
fn check_config(dir: &std::path::Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let config = dir.join("vaultd.toml");
    run_vaultd_env(
        &["check-config", "--config", &config.to_string_lossy()],
        env,
    )
}

#[tokio::test]
async fn check_config_passes_a_good_file_and_refuses_a_bad_one_naming_the_setting() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
    write_config(dir.path(), "url = \"sqlite:vault.db\"\n", DEV_KEK);
    let (code, printed) = check_config(dir.path(), &[]);
    assert_eq!(code, Some(0), "{printed}");
    assert!(
        printed.contains(": ok: ") && printed.contains("storage sqlite"),
        "{printed}"
    );
    // Nothing was started or created.
    assert!(!dir.path().join("vault.db").exists());

    // A setting the vault refuses, named as the file spells it.
    write_vaultd_toml(
        dir.path(),
        "url = \"sqlite:vault.db\"\n",
        &format!("{DEV_KEK}[telemetry]\notlp_endpoint = \"collector:4317\"\n"),
    );
    let (code, printed) = check_config(dir.path(), &[]);
    assert_eq!(code, Some(78), "{printed}");
    assert!(printed.contains("telemetry.otlp_endpoint"), "{printed}");

    // A key file other users may read.
    write_vaultd_toml(dir.path(), "url = \"sqlite:vault.db\"\n", DEV_KEK);
    let key = dir.path().join("pki/server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, printed) = check_config(dir.path(), &[]);
    assert_eq!(code, Some(78), "{printed}");
    assert!(
        printed.contains("tls.key") && printed.contains("0600"),
        "{printed}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A missing policy file, a dev KEK file that is not private.
    std::fs::rename(dir.path().join("policy.toml"), dir.path().join("p")).unwrap();
    let (code, printed) = check_config(dir.path(), &[]);
    assert_eq!(code, Some(78), "{printed}");
    assert!(printed.contains("policy.toml"), "{printed}");
    std::fs::rename(dir.path().join("p"), dir.path().join("policy.toml")).unwrap();
    let kek = dir.path().join("kek.key");
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, printed) = check_config(dir.path(), &[]);
    assert_eq!(code, Some(78), "{printed}");
    assert!(printed.contains("kek.path"), "{printed}");
    std::fs::set_permissions(&kek, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Environment overrides are checked like the file, by name and never by value.
    let (code, printed) = check_config(
        dir.path(),
        &[("VAULTD_TELEMETRY__OTLP_ENDPOINT", "http://127.0.0.1:4317")],
    );
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("traces on"), "{printed}");
    let (code, printed) = check_config(
        dir.path(),
        &[("VAULTD_STORGE__URL", "postgres://vault:hunter2@db/vault")],
    );
    assert_eq!(code, Some(78), "{printed}");
    assert!(
        printed.contains("VAULTD_STORGE__URL") && !printed.contains("hunter2"),
        "{printed}"
    );
    let (code, printed) = check_config(dir.path(), &[("VAULTD_STORAGE__MAX_CONECTIONS", "5")]);
    assert_eq!(code, Some(78), "{printed}");
    assert!(printed.contains("max_conections"), "{printed}");
}

#[tokio::test]
async fn serve_takes_settings_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
    let vault = TestVault::start_in(
        dir,
        "url = \"sqlite:vault.db\"\n",
        DEV_KEK,
        &[("VAULTD_TELEMETRY__METRICS_LISTEN", "127.0.0.1:0")],
        "info",
    )
    .await;
    let (status, _) = http("GET", &vault.metrics_addr(), "/live").await;
    assert_eq!(status, 200);
}
