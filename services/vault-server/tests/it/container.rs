//! The container image (`deploy/image/`), run with podman the way an operator runs it: a
//! read-only root file system, no capabilities, an unprivileged user, the configuration and
//! keys mounted. A client outside the container tokenizes and detokenizes through the published
//! port.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::*;

/// The image under test: `$VAULT_TEST_IMAGE`, which scripts/test sets after building it. Fails
/// (never skips) with the way to get it.
pub fn image() -> String {
    let image = std::env::var("VAULT_TEST_IMAGE").unwrap_or_default();
    assert!(
        !image.is_empty(),
        "VAULT_TEST_IMAGE is not set: run the suite with scripts/test, which builds the image \
         with deploy/image/build (podman and runc from apt) and sets it"
    );
    let found = podman(&["image", "exists", &image]);
    assert!(
        found.status.success(),
        "image {image} not found: build it with deploy/image/build {image}"
    );
    image
}

/// Runs podman with the repository's containers.conf unless CONTAINERS_CONF says otherwise.
pub fn podman(args: &[&str]) -> Output {
    let mut command = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none() {
        command.env("CONTAINERS_CONF", repo().join("deploy/containers.conf"));
    }
    command.args(args).output().unwrap_or_else(|e| {
        panic!("podman not found ({e}): apt-get install podman runc (scripts/test does)")
    })
}

/// podman's standard output, panicking with its standard error if it failed.
pub fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Gives `dir` and everything in it to the image's user (10001), as a Kubernetes fsGroup or an
/// operator's `chown` would, so the vault's file-mode rule (owner-only keys) holds inside.
pub fn give_to_image_user(dir: &Path) {
    let dir = dir.to_string_lossy();
    let owned = Command::new("chown")
        .args(["-R", "10001:10001", &dir])
        .status()
        .is_ok_and(|s| s.success());
    if !owned {
        // Not root: rootless podman maps 10001 inside to a subordinate uid outside.
        podman_ok(&["unshare", "chown", "-R", "10001:10001", &dir]);
    }
}

/// A podman network of the test's own, removed when dropped. Podman gives it a subnet no other
/// network of its holds, so the test does not depend on the default network's state (a host
/// that once ran podman with CNI keeps a `cni-podman0` route over the default's subnet).
pub struct Network {
    pub name: String,
}

impl Network {
    pub fn create(prefix: &str) -> Self {
        let name = format!("{prefix}{}", std::process::id());
        let _ = podman(&["network", "rm", "--force", &name]);
        podman_ok(&["network", "create", &name]);
        Network { name }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = podman(&["network", "rm", "--force", &self.name]);
    }
}

/// A running container, removed when dropped.
pub struct Container {
    pub id: String,
}

impl Container {
    pub fn run(args: &[&str]) -> Self {
        let mut all = vec!["run", "--detach"];
        all.extend_from_slice(args);
        Container {
            id: podman_ok(&all),
        }
    }

    /// The host address a container port is published on.
    pub fn published(&self, port: &str) -> String {
        let line = podman_ok(&["port", &self.id, port]);
        let addr = line.lines().next().unwrap_or_default().trim();
        addr.replace("0.0.0.0", "127.0.0.1")
    }

    pub fn logs(&self) -> String {
        let out = podman(&["logs", &self.id]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// Waits until the metrics listener at `metrics` answers `/ready` with 200.
    pub async fn wait_ready(&self, metrics: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Ok((200, _))) =
                tokio::time::timeout(Duration::from_secs(2), try_http(metrics, "/ready")).await
            {
                return;
            }
            let running = podman_ok(&["inspect", "--format", "{{.State.Running}}", &self.id]);
            assert!(running == "true", "the container stopped:\n{}", self.logs());
            assert!(
                Instant::now() < deadline,
                "not ready in 60 s:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Tokenizes a new card (a PAN starting with `prefix`) for `merchant` as the gateway and
    /// detokenizes it as the payments service through `grpc`, with the identities in `pki` (a
    /// `vaultd dev` layout: ca.pem, NAME.pem, NAME.key); returns the PAN.
    pub async fn round_trip(&self, grpc: &str, pki: &Path, merchant: &str, prefix: &str) -> String {
        let read = |name: &str| std::fs::read_to_string(pki.join(name)).unwrap();
        let ca = read("ca.pem");
        let pan = random_pan(prefix);
        let mut gateway = connect(
            grpc,
            &ca,
            Some((&read("gateway.pem"), &read("gateway.key"))),
        )
        .await;
        let token = gateway
            .tokenize(tokenize_request(merchant, &pan))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
            .into_inner()
            .token;
        let mut payments = connect(
            grpc,
            &ca,
            Some((&read("payments.pem"), &read("payments.key"))),
        )
        .await;
        let back = payments
            .detokenize(detokenize_request(merchant, &token))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
            .into_inner()
            .take_pan();
        assert_eq!(back, pan);
        pan
    }

    /// Stops the container with SIGTERM and returns its exit code.
    pub fn stop(&self) -> String {
        podman_ok(&["stop", "--time", "20", &self.id]);
        podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &self.id])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.id]);
    }
}

/// `http` that reports a refused connection instead of panicking (the port is published
/// before the process inside listens).
async fn try_http(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    tokio::net::TcpStream::connect(addr).await?;
    let addr = addr.to_owned();
    let path = path.to_owned();
    tokio::spawn(async move { http("GET", &addr, &path).await })
        .await
        .map_err(std::io::Error::other)
}

#[tokio::test]
async fn the_image_serves_a_round_trip_through_its_published_port() {
    let image = image();

    // What the image holds: the two binaries, the libraries they load, the user, and nothing
    // else (no shell, no package manager).
    let user = podman_ok(&["image", "inspect", "--format", "{{.Config.User}}", &image]);
    assert_eq!(user, "10001:10001");
    let entry = podman_ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Config.Entrypoint}}",
        &image,
    ]);
    assert_eq!(entry, "[/usr/local/bin/vaultd serve]");
    let created = podman_ok(&["create", &image]);
    let listing = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "CONTAINERS_CONF=${{CONTAINERS_CONF:-{}}} podman export {created} | tar -t",
            repo().join("deploy/containers.conf").display()
        ))
        .output()
        .unwrap();
    podman_ok(&["rm", &created]);
    let files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|f| !f.ends_with('/'))
        .map(str::to_owned)
        .collect();
    for needed in [
        "usr/local/bin/vaultd",
        "usr/local/bin/vaultctl",
        "etc/passwd",
    ] {
        assert!(files.iter().any(|f| f == needed), "{needed} in {files:?}");
    }
    let unexpected: Vec<&String> = files
        .iter()
        .filter(|f| {
            !(f.starts_with("usr/local/bin/vault")
                || f.starts_with("lib")
                || f.starts_with("usr/lib")
                || [
                    "etc/passwd",
                    "etc/group",
                    "etc/hosts",
                    "etc/resolv.conf",
                    "etc/hostname",
                ]
                .contains(&f.as_str())
                || f.starts_with("run/"))
        })
        .collect();
    assert!(unexpected.is_empty(), "unexpected files: {unexpected:?}");

    // A dev-style configuration generated outside, mounted in, owned by the image's user.
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("vault");
    vault_server::dev::ensure_data_dir(&data).unwrap();
    give_to_image_user(&data);
    let mount = format!("{}:/var/lib/vault", data.display());
    let network = Network::create("cvimage");
    let vault = Container::run(&[
        "--network",
        &network.name,
        "--read-only",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "--publish=127.0.0.1::50051",
        "--publish=127.0.0.1::9464",
        "--volume",
        &mount,
        "--env=VAULTD_CONFIG=/var/lib/vault/vaultd.toml",
        "--env=VAULTD_LISTEN=0.0.0.0:50051",
        "--env=VAULTD_TELEMETRY__METRICS_LISTEN=0.0.0.0:9464",
        &image,
    ]);
    let (grpc, metrics) = (vault.published("50051/tcp"), vault.published("9464/tcp"));
    vault.wait_ready(&metrics).await;

    let pan = vault
        .round_trip(&grpc, &data.join("pki"), "m-image", "4")
        .await;

    // The process inside runs as the unprivileged user, and as uid 10001 on the host.
    let top = podman_ok(&["top", &vault.id, "user", "huser"]);
    let users: Vec<Vec<&str>> = top
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(!users.is_empty(), "{top}");
    assert!(users.iter().all(|u| u == &["vault", "10001"]), "{top}");

    // A graceful stop, and the card appears nowhere in what the container printed.
    let code = vault.stop();
    let logs = vault.logs();
    assert_eq!(code, "0", "{logs}");
    assert!(logs.contains("vaultd listening on"), "{logs}");
    assert!(!logs.contains(&pan), "the PAN is in the container's logs");
}

/// The pattern deploy/kubernetes/deployment.yaml uses for an HSM: the vendor's PKCS#11 module
/// and the libraries it needs mounted at /opt/hsm/lib (on LD_LIBRARY_PATH), since the image
/// has only glibc. SoftHSM2 stands in for the vendor: `vaultd create-kek` and `vaultd serve` in
/// the image open it, with no writable /tmp or /run (as in a pod), and a round trip works.
#[tokio::test]
async fn the_image_opens_an_hsm_module_mounted_beside_it() {
    let image = image();
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("vault");
    vault_server::dev::ensure_data_dir(&data).unwrap();
    let hsm = crate::hsm::SoftHsm::new(&data);
    drop(hsm);

    // The "vendor's" client directory: the module and what it links beyond glibc.
    let client = work.path().join("hsm-client");
    let lib = client.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    let module = Path::new(crate::hsm::MODULE);
    std::fs::copy(module, lib.join("libsofthsm2.so")).unwrap();
    let ldd = Command::new("ldd").arg(module).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let Some((name, path)) = line.trim().split_once(" => ") else {
            continue;
        };
        let path = path.split_whitespace().next().unwrap_or_default();
        let in_image = ["libc.so", "libm.so", "libgcc_s.so"]
            .iter()
            .any(|glibc| name.starts_with(glibc));
        if !in_image && path.starts_with('/') {
            std::fs::copy(path, lib.join(name)).unwrap();
        }
    }

    // The configuration: the dev one with its KEK in the token instead of a file.
    let config = std::fs::read_to_string(data.join("vaultd.toml")).unwrap();
    let dev_kek = "backend = \"danger-local-file\"\npath = \"DANGER-dev-kek-not-an-hsm.key\"\n";
    assert!(
        config.contains(dev_kek),
        "the dev configuration changed:\n{config}"
    );
    let config = config.replace(
        dev_kek,
        &format!(
            "backend = \"pkcs11\"\nmodule = \"/opt/hsm/lib/libsofthsm2.so\"\n\
             token_label = \"{}\"\nkey_label = \"kek-image\"\npin_file = \"hsm-pin\"\n",
            crate::hsm::TOKEN
        ),
    );
    std::fs::write(data.join("vaultd.toml"), config).unwrap();
    std::fs::remove_file(data.join("DANGER-dev-kek-not-an-hsm.key")).unwrap();
    write_private(&data.join("hsm-pin"), crate::hsm::PIN);
    std::fs::write(
        data.join("softhsm2-image.conf"),
        "directories.tokendir = /var/lib/vault/hsm-tokens\nobjectstore.backend = file\n\
         log.level = ERROR\n",
    )
    .unwrap();
    give_to_image_user(&data);

    let mount = format!("{}:/var/lib/vault", data.display());
    let client_mount = format!("{}:/opt/hsm:ro", client.display());
    let common = [
        "--read-only",
        "--read-only-tmpfs=false",
        "--cap-drop=all",
        "--security-opt=no-new-privileges",
        "--volume",
        &mount,
        "--volume",
        &client_mount,
        "--env=LD_LIBRARY_PATH=/opt/hsm/lib",
        "--env=SOFTHSM2_CONF=/var/lib/vault/softhsm2-image.conf",
        "--env=VAULTD_CONFIG=/var/lib/vault/vaultd.toml",
    ];
    let mut create = vec!["run", "--rm", "--entrypoint=/usr/local/bin/vaultd"];
    create.extend_from_slice(&common);
    create.extend_from_slice(&[&image, "create-kek"]);
    let created = podman(&create);
    assert!(
        created.status.success(),
        "vaultd create-kek in the image: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    let network = Network::create("cvhsm");
    let mut serve = vec!["--network", &network.name];
    serve.extend_from_slice(&common);
    serve.extend_from_slice(&[
        "--publish=127.0.0.1::50051",
        "--publish=127.0.0.1::9464",
        "--env=VAULTD_LISTEN=0.0.0.0:50051",
        "--env=VAULTD_TELEMETRY__METRICS_LISTEN=0.0.0.0:9464",
        &image,
    ]);
    let vault = Container::run(&serve);
    let (grpc, metrics) = (vault.published("50051/tcp"), vault.published("9464/tcp"));
    vault.wait_ready(&metrics).await;

    let pan = vault
        .round_trip(&grpc, &data.join("pki"), "m-hsm-image", "3")
        .await;
    assert_eq!(vault.stop(), "0");
    let logs = vault.logs();
    assert!(
        logs.contains(&format!("pkcs11:{}/kek-image", crate::hsm::TOKEN)),
        "{logs}"
    );
    assert!(!logs.contains(&pan), "the PAN is in the container's logs");
}
