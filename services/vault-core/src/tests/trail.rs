//! The audit trail: signed checkpoints, reads, exports an auditor can verify, and the
//! refusals that keep a prune from removing anything not exported or still online.

use vault_audit::{CheckpointKind, Line};

use super::*;
use crate::testing::{KekFault, StoreFault};
use crate::trail::{AuditReadCommand, AuditRetention, PruneCommand};

/// Every line of a whole export, as the JSON lines `vaultctl audit export` writes.
async fn export(vault: &Vault) -> String {
    let mut export = vault.export_audit(&ctx(AUDITOR), None, None).await.unwrap();
    let mut text = serde_json::to_string(&Line::Header(export.header().clone())).unwrap();
    text.push('\n');
    while let Some(page) = export.next_page().await.unwrap() {
        for line in page {
            text.push_str(&serde_json::to_string(&line).unwrap());
            text.push('\n');
        }
    }
    text
}

fn verify(vault: &Vault, export: &str) -> vault_audit::Report {
    let segment = vault_audit::parse_export("export.jsonl", export.as_bytes()).unwrap();
    vault_audit::verify(&[segment], &[vault.audit_public_key().unwrap()])
}

#[tokio::test]
async fn an_export_of_a_checkpointed_trail_verifies_and_an_edit_does_not() {
    let world = World::new();
    world.vault.start_audit("test start".into()).await.unwrap();
    let pans = cards(3);
    let mut tokens = Vec::new();
    for pan in &pans {
        tokens.push(world.tokenize(M1, pan).await.unwrap().token);
    }
    world
        .detokenize(PAYMENTS, M1, tokens[0].as_str())
        .await
        .unwrap();
    let signed = world
        .vault
        .checkpoint(CheckpointKind::Interval)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(signed.seq, 5, "vault.start, three tokenizes, a detokenize");
    // Nothing new since: no new checkpoint.
    assert!(
        world
            .vault
            .checkpoint(CheckpointKind::Interval)
            .await
            .unwrap()
            .is_none()
    );
    let text = export(&world.vault).await;
    let report = verify(&world.vault, &text);
    assert!(report.is_clean(), "{report:?}");
    for pan in &pans {
        assert!(!text.contains(pan.as_str()));
    }
    // An auditor finds a changed record.
    let edited = text.replacen("\"outcome\":\"success\"", "\"outcome\":\"denied\"", 1);
    assert_ne!(edited, text);
    assert!(!verify(&world.vault, &edited).is_clean());
}

#[tokio::test]
async fn the_trail_cannot_start_without_its_key_and_reads_fail_closed() {
    let world = World::new();
    world.kek.set_fault(KekFault::Down);
    let err = world.vault.start_audit("start".into()).await.unwrap_err();
    assert!(matches!(err, VaultError::KeyUnavailable(_)), "{err:?}");
    world.kek.set_fault(KekFault::None);
    world.vault.start_audit("start".into()).await.unwrap();

    let read = |caller: &'static str| {
        let vault = world.vault.clone();
        async move {
            let command = AuditReadCommand {
                event: Some("tokenize".into()),
                ..AuditReadCommand::default()
            };
            vault.read_audit(&ctx(caller), command).await
        }
    };
    world.tokenize(M1, &cards(1)[0]).await.unwrap();
    let mut reader = read(AUDITOR).await.unwrap();
    let page = reader.next_page().await.unwrap().unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].event, "tokenize");
    let err = read(PAYMENTS).await.err().unwrap();
    assert!(
        matches!(err, VaultError::PermissionDenied { .. }),
        "{err:?}"
    );
    // A read whose own record cannot be written returns nothing.
    world.store.set_fault(StoreFault::AuditWrites);
    let err = read(AUDITOR).await.err().unwrap();
    assert!(matches!(err, VaultError::AuditUnavailable(_)), "{err:?}");
}

#[tokio::test]
async fn a_prune_removes_only_what_an_export_of_this_trail_holds() {
    let retention = AuditRetention {
        online_days: 0,
        retain_days: 365,
    };
    let world = World::build(|vault| vault.with_audit_retention(retention));
    world.vault.start_audit("start".into()).await.unwrap();
    for pan in &cards(4) {
        world.tokenize(M1, pan).await.unwrap();
    }
    let signed = world
        .vault
        .checkpoint(CheckpointKind::Export)
        .await
        .unwrap()
        .unwrap();
    let prune = |command: PruneCommand, caller: &'static str| {
        let vault = world.vault.clone();
        async move { vault.prune_audit(&ctx(caller), command).await }
    };
    let good = PruneCommand {
        before: crate::clock::stamp(crate::clock::now()),
        export_first: 1,
        export_last: signed.cp_seq,
        export_last_hash: signed.hash.to_vec(),
    };
    // Refusals first: each changes nothing.
    let refusals = [
        (
            PruneCommand {
                export_last_hash: vec![7; 32],
                ..good.clone()
            },
            "not this vault's",
        ),
        (
            PruneCommand {
                export_last: 99,
                ..good.clone()
            },
            "not online",
        ),
        (
            PruneCommand {
                export_last_hash: vec![7; 3],
                ..good.clone()
            },
            "export_last_hash",
        ),
        (
            PruneCommand {
                before: "yesterday".into(),
                ..good.clone()
            },
            "before",
        ),
        (
            PruneCommand {
                export_first: 0,
                ..good.clone()
            },
            "export_first_checkpoint",
        ),
    ];
    for (command, says) in refusals {
        let err = prune(command, AUDITOR).await.unwrap_err();
        assert!(err.to_string().contains(says), "{err} should say {says}");
    }
    let err = prune(good.clone(), PAYMENTS).await.unwrap_err();
    assert!(
        matches!(err, VaultError::PermissionDenied { .. }),
        "{err:?}"
    );
    assert_eq!(world.records("tokenize").len(), 4);
    // The export's checkpoint and everything it signs go; a prune checkpoint anchors the rest.
    let pruned = prune(good, AUDITOR).await.unwrap();
    assert_eq!(pruned.through, Some(signed.cp_seq));
    assert_eq!(pruned.removed.records, 5, "vault.start and four tokenizes");
    assert_eq!(pruned.checkpoints_written, 1);
    assert!(world.records("tokenize").is_empty());
    let outcomes: Vec<String> = world
        .records("audit.prune")
        .into_iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            "failed_precondition",
            "failed_precondition",
            "invalid_argument",
            "invalid_argument",
            "invalid_argument",
            "denied",
            "success"
        ]
    );
}

#[tokio::test]
async fn a_prune_never_reaches_into_the_online_window() {
    let world = World::new();
    world.vault.start_audit("start".into()).await.unwrap();
    world.tokenize(M1, &cards(1)[0]).await.unwrap();
    let signed = world
        .vault
        .checkpoint(CheckpointKind::Export)
        .await
        .unwrap()
        .unwrap();
    let command = PruneCommand {
        before: crate::clock::stamp(crate::clock::now()),
        export_first: 1,
        export_last: signed.cp_seq,
        export_last_hash: signed.hash.to_vec(),
    };
    let err = world
        .vault
        .prune_audit(&ctx(AUDITOR), command)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("online window"), "{err}");
    assert_eq!(world.records("tokenize").len(), 1);
}
