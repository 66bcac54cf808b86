//! The Kubernetes manifests (`deploy/kubernetes/`): `deploy/kubernetes/validate` passes them
//! against Kubernetes' own schemas and the ServiceMonitor against the Prometheus Operator CRD's,
//! refuses a broken copy, and what the manifests promise holds (replicas, anti-affinity, probes
//! on the readiness endpoint, the PCI segment's network boundary, Secrets as root-owned files
//! the vault's group reads, and the configuration being the production example verbatim).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::container::repo;

fn manifests() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// Runs deploy/kubernetes/validate on `dir`: success, and what it printed.
fn validate(dir: &Path) -> (bool, String) {
    let validator = std::env::var("KUBERNETES_VALIDATE").unwrap_or_default();
    assert!(
        !validator.is_empty() && Path::new(&validator).exists(),
        "KUBERNETES_VALIDATE is not set to kubernetes-validate: run the suite with scripts/test, \
         which installs it (PyPI kubernetes-validate) into target/test-tools/venv"
    );
    let out = Command::new(manifests().join("validate"))
        .arg(dir)
        .env("KUBERNETES_VALIDATE", &validator)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every document in the manifests, parsed by the PyYAML that kubernetes-validate uses.
fn documents() -> Vec<Value> {
    let validator = std::env::var("KUBERNETES_VALIDATE").unwrap_or_default();
    let python = Path::new(&validator).with_file_name("python");
    let script = "import glob, json, sys, yaml\n\
                  docs = [d for f in sorted(glob.glob(sys.argv[1] + '/*.yaml'))\n\
                          for d in yaml.safe_load_all(open(f)) if d]\n\
                  print(json.dumps(docs))";
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(manifests())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/test installs it)", python.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name}"))
}

#[test]
fn the_manifests_pass_the_schemas_and_a_broken_copy_does_not() {
    let (ok, printed) = validate(&manifests());
    assert!(ok, "{printed}");
    assert!(
        printed.contains("ServiceMonitor/card-vault passed"),
        "{printed}"
    );

    // A field Kubernetes does not know, and a value the CRD does not allow: each refused.
    for (file, from, to) in [
        (
            "deployment.yaml",
            "terminationGracePeriodSeconds: 30",
            "terminationGracePeriodSeconds: 30\n      hostNetwok: true",
        ),
        ("servicemonitor.yaml", "scheme: http", "scheme: gopher"),
    ] {
        let copy = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(manifests()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
        }
        let target = copy.path().join(file);
        let text = std::fs::read_to_string(&target).unwrap();
        assert!(text.contains(from), "{file} has no {from}");
        std::fs::write(&target, text.replacen(from, to, 1)).unwrap();
        let (ok, printed) = validate(copy.path());
        assert!(!ok, "the broken {file} passed:\n{printed}");
    }
}

#[test]
fn the_manifests_hold_what_they_promise() {
    let docs = documents();

    // The configuration is the production example, verbatim (config tests load that file).
    let config = find(&docs, "ConfigMap", "card-vault-config");
    for (key, file) in [
        ("vaultd.toml", "vaultd.production.toml"),
        ("policy.production.toml", "policy.production.toml"),
    ] {
        let expected = std::fs::read_to_string(repo().join("deploy").join(file)).unwrap();
        assert_eq!(
            config["data"][key].as_str(),
            Some(expected.as_str()),
            "configmap.yaml's {key} differs from deploy/{file}"
        );
    }

    let deployment = find(&docs, "Deployment", "card-vault");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 3);
    let pod = &spec["template"]["spec"];
    let required =
        &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(required[0]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["fsGroup"], 10001);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let vaultd = &pod["containers"][0];
    assert_eq!(vaultd["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(vaultd["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(vaultd["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(vaultd["readinessProbe"]["httpGet"]["port"], "metrics");
    assert!(vaultd["resources"]["limits"]["memory"].is_string());
    assert!(
        vaultd.get("envFrom").is_none(),
        "secrets come as files only"
    );
    // Secrets are mounted 0440: root-owned and group-readable with the fsGroup, which the
    // vault's file-mode rule accepts and nothing else in the pod can read.
    for volume in pod["volumes"].as_array().unwrap() {
        if let Some(projected) = volume.get("projected") {
            assert_eq!(projected["defaultMode"], 0o440, "{volume}");
        }
    }
    // Every file the configuration names under /etc/vault or /run/secrets is a file the
    // projected volumes put there: a ConfigMap key or a Secret item, at that path.
    let mut files = Vec::new();
    for mount in vaultd["volumeMounts"].as_array().unwrap() {
        let at = mount["mountPath"].as_str().unwrap();
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        for source in volume["projected"]["sources"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if let Some(map) = source.get("configMap") {
                let name = map["name"].as_str().unwrap();
                let data = find(&docs, "ConfigMap", name)["data"].as_object().unwrap();
                files.extend(data.keys().map(|key| format!("{at}/{key}")));
            }
            for item in source["secret"]["items"].as_array().into_iter().flatten() {
                files.push(format!("{at}/{}", item["path"].as_str().unwrap()));
            }
        }
    }
    let toml = config["data"]["vaultd.toml"].as_str().unwrap();
    let named: Vec<&str> = toml
        .split('"')
        .filter(|part| part.starts_with("/etc/vault/") || part.starts_with("/run/secrets/"))
        .chain(
            // The database CA, named inside the URL.
            toml.split(['&', '"'])
                .filter_map(|part| part.strip_prefix("sslrootcert=")),
        )
        .collect();
    assert!(named.len() >= 7, "{named:?}");
    for path in named {
        assert!(
            files.iter().any(|f| f == path),
            "{path} is not among {files:?}"
        );
    }
    assert!(files.contains(&"/etc/vault/policy.production.toml".to_owned()));
    // The HSM library comes from the init container's volume, on the loader's path.
    assert!(toml.contains("module = \"/opt/hsm/lib/"));
    assert!(
        vaultd["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "LD_LIBRARY_PATH" && e["value"] == "/opt/hsm/lib")
    );
    for probe in ["livenessProbe", "startupProbe"] {
        assert_eq!(vaultd[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    // Rolling one replica at a time in place: a surge pod would have no node left under the
    // one-per-node rule on a 3-node cluster.
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxSurge"], 0);

    let budget = find(&docs, "PodDisruptionBudget", "card-vault");
    assert_eq!(budget["spec"]["minAvailable"], 2);

    // The segment's boundary: gRPC from the gateway and payments namespaces only, metrics
    // from Prometheus only, and a default deny for everything else.
    let deny = find(&docs, "NetworkPolicy", "card-vault-default-deny");
    assert_eq!(deny["spec"]["podSelector"], serde_json::json!({}));
    let policy = find(&docs, "NetworkPolicy", "card-vault");
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    let grpc = ingress
        .iter()
        .find(|rule| rule["ports"][0]["port"] == 50051)
        .unwrap();
    let namespaces: Vec<&str> = grpc["from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|peer| {
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(namespaces, ["gateway", "payments"]);
    let admins = ingress
        .iter()
        .filter(|rule| rule["ports"][0]["port"] == 50051)
        .nth(1)
        .unwrap();
    assert_eq!(
        admins["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "card-vault-admin"
    );
    let metrics = ingress
        .iter()
        .find(|rule| rule["ports"][0]["port"] == 9464)
        .unwrap();
    assert_eq!(metrics["from"].as_array().unwrap().len(), 1);
    assert!(metrics["from"][0]["podSelector"].is_object());
    let namespace = find(&docs, "Namespace", "card-vault");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    // Egress: PostgreSQL, the HSM and DNS, nothing else.
    let egress_ports: Vec<u64> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap().iter())
        .map(|port| port["port"].as_u64().unwrap())
        .collect();
    assert_eq!(egress_ports, [5432, 1792, 53, 53, 443]);

    let job = find(&docs, "Job", "card-vault-migrate");
    let migrate = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(migrate["command"][1], "migrate");
    let job_text = job.to_string();
    assert!(
        !job_text.contains("hsm-pin") && !job_text.contains("server.key"),
        "the migration job needs neither the HSM PIN nor the TLS key"
    );
    assert_eq!(
        find(&docs, "ServiceMonitor", "card-vault")["spec"]["endpoints"][0]["port"],
        "metrics"
    );
}
