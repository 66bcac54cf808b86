//! The second-language client: `examples/python/vault_client.py` (grpcio, stubs generated from
//! proto/ as it starts) tokenizes, reads metadata and detokenizes over mutual TLS against
//! `vaultd dev`, as its docstring tells a newcomer to run it.

use std::path::PathBuf;

use crate::harness::*;

/// The Python with the example's requirements, or a message saying how to get it.
fn python() -> PathBuf {
    let python = std::env::var_os("VAULT_TEST_PYTHON").map(PathBuf::from);
    python.filter(|p| p.exists()).unwrap_or_else(|| {
        panic!(
            "VAULT_TEST_PYTHON is not set to a Python with examples/python/requirements.txt \
             installed: run the suite with scripts/test, which installs them into \
             target/test-tools/venv"
        )
    })
}

#[tokio::test]
async fn the_python_example_round_trips_a_card_against_vaultd_dev() {
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("vault-dev");
    let (mut child, _) = start_dev(&data_dir, work.path()).await;
    let logs = read_logs(work.path());
    let addr = logs
        .lines()
        .find_map(|line| line.strip_prefix("vaultd listening on "))
        .unwrap()
        .trim()
        .to_owned();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/python/vault_client.py");
    let output = std::process::Command::new(python())
        .arg(&script)
        .args(["--addr", &addr, "--dev-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    terminate(&mut child);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("token: tok_"), "{printed}");
    assert!(
        printed.contains("metadata: brand visa, bin 424242, last4 4242"),
        "{printed}"
    );
    assert!(
        printed.contains("detokenize: the card ending 4242 came back"),
        "{printed}"
    );
    assert!(
        printed.contains("detokenize as the gateway: PERMISSION_DENIED"),
        "{printed}"
    );
    assert!(!printed.contains("4242424242424242"), "{printed}");
}
