//! A throwaway PostgreSQL cluster for tests that must stop a database or configure its TLS:
//! initdb and pg_ctl in a temp dir, a random port, run as the unprivileged `postgres` user
//! (initdb refuses root). Never the machine's own server.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

/// A PostgreSQL cluster of our own, run as the unprivileged `postgres` user (initdb refuses
/// root). Stopped and removed on drop.
pub struct ThrowawayCluster {
    dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    ssl: String,
}

impl ThrowawayCluster {
    /// Creates and starts a cluster; with `tls` (a certificate and key, PEM) it also accepts
    /// TLS connections.
    pub fn create(tls: Option<(&str, &str)>) -> Self {
        Self::create_with(tls, None)
    }

    /// [`ThrowawayCluster::create`], and with `password` the `postgres` user has that password
    /// and TCP connections must give it (scram-sha-256; the Unix socket stays trusted).
    pub fn create_with(tls: Option<(&str, &str)>, password: Option<&str>) -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| {
                versions
                    .filter_map(Result::ok)
                    .map(|v| v.path().join("bin"))
                    .filter(|bin| bin.join("initdb").exists())
                    .max()
            })
            .unwrap_or_else(|| {
                panic!(
                    "no PostgreSQL server binaries under /usr/lib/postgresql: \
                     apt-get install postgresql (initdb and pg_ctl are needed)"
                )
            });
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let socket_dir = dir.path().join("socket");
        std::fs::create_dir_all(&socket_dir).unwrap();
        let log = dir.path().join("postgres.log");
        shell(
            &format!("chown -R postgres {}", dir.path().display()),
            false,
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let auth = match password {
            None => "-A trust".to_owned(),
            Some(password) => {
                let file = dir.path().join("pwfile");
                std::fs::write(&file, format!("{password}\n")).unwrap();
                shell(&format!("chown postgres {}", file.display()), false);
                format!(
                    "--auth-local=trust --auth-host=scram-sha-256 --pwfile={}",
                    file.display()
                )
            }
        };
        shell(
            &format!(
                "{} -D {} {auth} -U postgres --no-sync >/dev/null",
                bin.join("initdb").display(),
                data.display()
            ),
            true,
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut ssl = String::new();
        if let Some((cert, key)) = tls {
            let (cert_path, key_path) =
                (dir.path().join("server.crt"), dir.path().join("server.key"));
            std::fs::write(&cert_path, cert).unwrap();
            std::fs::write(&key_path, key).unwrap();
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
            shell(
                &format!(
                    "chown postgres {} {}",
                    cert_path.display(),
                    key_path.display()
                ),
                false,
            );
            ssl = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert_path.display(),
                key_path.display()
            );
        }
        let cluster = Self {
            ssl,
            dir,
            data,
            bin,
            socket_dir,
            log,
            port,
        };
        cluster.start();
        cluster
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&self) {
        shell(
            &format!(
                "{} -D {} -l {} -w -o \"-p {} -c listen_addresses=127.0.0.1 -k {}{}\" start >/dev/null",
                self.bin.join("pg_ctl").display(),
                self.data.display(),
                self.log.display(),
                self.port,
                self.socket_dir.display(),
                self.ssl
            ),
            true,
        );
    }

    /// Stops the server at once, as a crash would (no checkpoint).
    pub fn stop_immediately(&self) {
        shell(
            &format!(
                "{} -D {} -m immediate -w stop >/dev/null",
                self.bin.join("pg_ctl").display(),
                self.data.display()
            ),
            true,
        );
    }

    /// The URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A directory the test may write files into (CA certificates, say).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", "sh", "-c"])
            .arg(format!(
                "{} -D {} -m immediate stop",
                self.bin.join("pg_ctl").display(),
                self.data.display()
            ))
            .output();
    }
}

/// Runs a shell command, as the `postgres` user or as ourselves (root, for `chown`),
/// panicking with its output if it fails.
fn shell(command: &str, as_postgres: bool) {
    let output = if !as_postgres {
        Command::new("sh").arg("-c").arg(command).output()
    } else {
        Command::new("runuser")
            .args(["-u", "postgres", "--", "sh", "-c", command])
            .output()
    }
    .unwrap_or_else(|e| panic!("{command}: {e} (runuser from util-linux is needed)"));
    assert!(
        output.status.success(),
        "{command}\n{}{}\n(the throwaway cluster runs as the unprivileged `postgres` user, \
         which the postgresql package creates)",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
