//! Process and file hygiene: no core dumps, secret files only their owner can read, the
//! PostgreSQL password from such a file rather than the URL.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::harness::*;
use crate::pg_cluster::ThrowawayCluster;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A running vaultd has a core file size limit of 0 that it cannot raise, and is not dumpable.
#[tokio::test]
async fn a_running_vaultd_cannot_dump_core() {
    let vault = TestVault::start().await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", vault.pid())).unwrap();
    let core = limits
        .lines()
        .find(|line| line.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(fields[4..6], ["0", "0"], "soft and hard limits: {core}");
    assert!(
        vault.logs().contains("dumpable=Some(false)"),
        "{}",
        vault.logs()
    );
}

/// A TLS key file other users can read stops vaultd at start, naming the setting and the
/// mode, never the key; 0640 is accepted only from root (the tests run as root, so 0640 owned
/// by root passes, and 0644 never does).
#[tokio::test]
async fn a_tls_key_other_users_can_read_stops_vaultd_at_start() {
    let dir = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
    write_config(dir.path(), "url = \"sqlite:vault.db\"\n", DEV_KEK);
    let key = dir.path().join("pki/server.key");
    chmod(&key, 0o644);
    let printed = refused_start(dir.path());
    assert!(
        printed.contains("tls.key") && printed.contains("mode 644"),
        "{printed}"
    );
    assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    chmod(&key, 0o604);
    assert!(refused_start(dir.path()).contains("mode 604"));
}

/// `[storage] password_file`: a PostgreSQL server that wants a password (scram-sha-256) is
/// reached with the file's password and none in the URL. Without the file vaultd cannot
/// connect; with a file other users can read it stops at start, naming the setting and
/// never the password; a password in the URL as well is refused.
#[tokio::test]
async fn the_postgres_password_comes_from_a_file_only_its_owner_can_read() {
    const PASSWORD: &str = "correct-horse-battery-9";
    let cluster = ThrowawayCluster::create_with(None, Some(PASSWORD));
    let url = cluster.url();
    let storage = format!("url = {url:?}\npassword_file = \"pg-password\"\n");

    let refused = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&refused.path().join("kek.key")).unwrap();
    write_config(refused.path(), &format!("url = {url:?}\n"), DEV_KEK);
    let printed = refused_start(refused.path());
    assert!(
        printed.contains("password"),
        "no password, no connection: {printed}"
    );

    let file = refused.path().join("pg-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    chmod(&file, 0o644);
    write_vaultd_toml(refused.path(), &storage, DEV_KEK);
    let printed = refused_start(refused.path());
    assert!(
        printed.contains("storage.password_file") && printed.contains("mode 644"),
        "{printed}"
    );
    assert!(!printed.contains(PASSWORD), "{printed}");
    let with_password = url.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    write_vaultd_toml(
        refused.path(),
        &format!("url = {with_password:?}\npassword_file = \"pg-password\"\n"),
        DEV_KEK,
    );
    let printed = refused_start(refused.path());
    assert!(printed.contains("give it in one place"), "{printed}");
    assert!(!printed.contains(PASSWORD), "{printed}");

    let dir = tempfile::tempdir().unwrap();
    vault_kms::DangerLocalFileKek::create(&dir.path().join("kek.key")).unwrap();
    write_private(&dir.path().join("pg-password"), &format!("{PASSWORD}\n"));
    let vault = TestVault::start_in(dir, &storage, DEV_KEK, &[], "info").await;
    let pan = "4111111111111111";
    let token = vault.tokenize_at(&vault.addr, "m1", pan).await;
    assert_eq!(vault.detokenize_at(&vault.addr, "m1", &token).await, pan);
    assert!(!vault.logs().contains(PASSWORD));
}
