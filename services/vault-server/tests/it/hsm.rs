//! `vaultd` with its KEK in an HSM: a SoftHSM2 token of the test's own (its own config and token
//! directory, so removing it touches no other test), reached through the PKCS#11 module.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const TOKEN: &str = "vault-e2e";
pub const PIN: &str = "4321-e2e";
pub const PIN_ENV: &str = "VAULT_TEST_HSM_PIN";

/// A SoftHSM2 configuration and token directory inside a test's data directory.
pub struct SoftHsm {
    conf: PathBuf,
    pub tokens: PathBuf,
}

impl SoftHsm {
    pub fn new(dir: &Path) -> Self {
        assert!(
            Path::new(MODULE).exists() && which("softhsm2-util"),
            "SoftHSM2 is needed: run the tests with `scripts/test`, which installs softhsm2 \
             (apt-get install softhsm2)"
        );
        let tokens = dir.join("hsm-tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let hsm = Self { conf, tokens };
        hsm.util(&[
            "--init-token",
            "--free",
            "--label",
            TOKEN,
            "--so-pin",
            "0000",
            "--pin",
            PIN,
        ]);
        hsm
    }

    fn util(&self, args: &[&str]) -> String {
        let out = Command::new("softhsm2-util")
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "softhsm2-util {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// The child's environment: this HSM's configuration and the PIN (right or wrong).
    pub fn env<'a>(&'a self, pin: &'a str) -> [(&'a str, &'a str); 2] {
        [
            ("SOFTHSM2_CONF", self.conf.to_str().unwrap()),
            (PIN_ENV, pin),
        ]
    }

    pub fn kek_config() -> String {
        Self::kek_table("kek", "kek-1")
    }

    /// A `[kek]` (or `[[previous_kek]]`) table for the key labelled `label` in this token.
    pub fn kek_table(table: &str, label: &str) -> String {
        let header = if table == "kek" {
            "[kek]".to_owned()
        } else {
            format!("[[{table}]]")
        };
        format!(
            "{header}\nbackend = \"pkcs11\"\nmodule = {MODULE:?}\ntoken_label = {TOKEN:?}\n\
             key_label = {label:?}\npin_env = {PIN_ENV:?}\n"
        )
    }

    /// Runs `vaultd create-kek` on the configuration in `dir` with this HSM.
    pub fn create_kek(&self, dir: &Path) {
        let out = Command::new(env!("CARGO_BIN_EXE_vaultd"))
            .args(["create-kek", "--config"])
            .arg(dir.join("vaultd.toml"))
            .envs(self.env(PIN))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "vaultd create-kek: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn which(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|out| out.status.success())
}

/// A data directory with an HSM whose token holds the KEK (made by `vaultd create-kek`).
pub fn hsm_data_dir() -> (tempfile::TempDir, SoftHsm) {
    let dir = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(dir.path());
    write_config(
        dir.path(),
        "url = \"sqlite:vault.db\"\n",
        &SoftHsm::kek_config(),
    );
    hsm.create_kek(dir.path());
    (dir, hsm)
}

pub async fn start_with_hsm(dir: tempfile::TempDir, hsm: &SoftHsm) -> TestVault {
    let storage = "url = \"sqlite:vault.db\"\n";
    TestVault::start_in(dir, storage, &SoftHsm::kek_config(), &hsm.env(PIN), "info").await
}

#[tokio::test]
async fn an_hsm_kek_wraps_the_keys_and_a_wrong_pin_stops_vaultd_at_start() {
    let (dir, hsm) = hsm_data_dir();

    // A wrong PIN: vaultd refuses to start, says why, and never prints the PIN.
    let wrong = "7777-wrong";
    let mut child = spawn_vaultd_env(
        &[
            "serve",
            "--config",
            &dir.path().join("vaultd.toml").to_string_lossy(),
        ],
        dir.path(),
        "info",
        &hsm.env(wrong).map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "vaultd kept running with a wrong PIN"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let logs = read_logs(dir.path());
    assert_eq!(status.code(), Some(78), "{logs}");
    assert!(
        logs.contains("login to token \"vault-e2e\" failed"),
        "{logs}"
    );
    assert!(logs.contains("PIN is incorrect"), "{logs}");
    assert!(!logs.contains(wrong) && !logs.contains(PIN), "{logs}");

    // The right PIN: cards round-trip, and every key names the HSM KEK that wraps it.
    let vault = start_with_hsm(dir, &hsm).await;
    let pan = "4111111111111111";
    let token = vault.tokenize_at(&vault.addr, "m-hsm", pan).await;
    assert_eq!(vault.detokenize_at(&vault.addr, "m-hsm", &token).await, pan);
    let kek_ids: Vec<String> = sqlx::query_scalar("SELECT kek_id FROM data_keys")
        .fetch_all(&vault.db().await)
        .await
        .unwrap();
    // The merchant's DEK and fingerprint key, and the vault's audit signing key.
    assert_eq!(kek_ids, vec!["pkcs11:vault-e2e/kek-1"; 3]);
    assert!(!vault.logs().contains(PIN));
}

#[tokio::test]
async fn a_token_removed_mid_run_releases_no_pan_and_the_vault_recovers_when_it_returns() {
    let (dir, hsm) = hsm_data_dir();
    let vault = start_with_hsm(dir, &hsm).await;
    let pan = "5555555555554444";
    let token = vault.tokenize_at(&vault.addr, "m-hsm", pan).await;
    let mut payments = vault.client("payments").await;
    // The DEK is now in the cache too.
    for _ in 0..3 {
        let back = payments
            .detokenize(detokenize_request("m-hsm", &token))
            .await
            .unwrap();
        assert_eq!(back.into_inner().take_pan(), pan);
    }
    vault.wait_for_health(ServingStatus::Serving).await;

    // Pull the token: its directory leaves the token store.
    let slot_dir = std::fs::read_dir(&hsm.tokens)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .next()
        .unwrap();
    let pulled = vault.dir.path().join("pulled-token");
    std::fs::rename(&slot_dir, &pulled).unwrap();

    assert_kek_down_releases_nothing(&vault, "m-hsm", &token, pan, "m-hsm-2").await;

    // Put it back: the vault serves again without a restart.
    std::fs::rename(&pulled, &slot_dir).unwrap();
    vault.wait_for_health(ServingStatus::Serving).await;
    let back = payments
        .detokenize(detokenize_request("m-hsm", &token))
        .await
        .unwrap();
    assert_eq!(back.into_inner().take_pan(), pan);
    assert!(!vault.logs().contains(pan));
}
