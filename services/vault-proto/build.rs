//! Compiles `proto/vault/v1/*.proto` with protox (pure Rust, no `protoc` needed) and writes the
//! descriptor set that server reflection serves, and the list of every method's gRPC path.

use std::path::PathBuf;

/// Messages that carry a PAN, or free-text fields a careless caller might put one in: prost
/// must not derive `Debug` for them; `src/lib.rs` writes a redacted one by hand.
const PAN_BEARING: [&str; 10] = [
    "vault.v1.TokenizeRequest",
    "vault.v1.TokenizeBatchRequest",
    "vault.v1.BatchCard",
    "vault.v1.DetokenizeRequest",
    "vault.v1.DetokenizeResponse",
    "vault.v1.ReadRecordsRequest",
    "vault.v1.PruneRequest",
    "vault.v1.ForwardRequest",
    "vault.v1.ForwardResponse",
    "vault.v1.ResponseHeader",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        root.join("vault/v1/vault.proto"),
        root.join("vault/v1/admin.proto"),
        root.join("vault/v1/audit.proto"),
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("vault_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Every method's gRPC path, for metric labels that only ever take known values.
    let mut methods = String::from("&[\n");
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                methods.push_str(&format!(
                    "    \"/{}.{}/{}\",\n",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    methods.push(']');
    std::fs::write(out.join("vault_methods.rs"), methods)?;
    tonic_prost_build::configure()
        .skip_debug(PAN_BEARING)
        .compile_fds(fds)?;
    Ok(())
}
