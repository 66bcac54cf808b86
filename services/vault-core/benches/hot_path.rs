//! The per-request CPU work of tokenize and detokenize, piece by piece: parsing a PAN, making a
//! token, the fingerprint that deduplicates, sealing and opening the PAN under its bound AAD,
//! and hashing the call's audit record into its writer's chain; and a forward's own work:
//! rendering its template, checking its path and masking the card in the processor's answer.
//!
//! `cargo bench -p vault-core --bench hot_path`; figures in docs/benchmarks.md.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use vault_audit::Entry;
use vault_core::pan::Pan;
use vault_core::token::{Token, TokenFormat};
use vault_crypto::{AeadKey, FingerprintKey, KeyMaterial, associated_data};

const PAN: &str = "4111 1111 1111 1111";

fn pan_and_token(c: &mut Criterion) {
    c.bench_function("pan_parse", |b| {
        b.iter(|| Pan::parse("pan", black_box(PAN)));
    });
    let pan = Pan::parse("pan", PAN).unwrap_or_else(|_| unreachable!());
    c.bench_function("token_generate_random", |b| {
        b.iter(|| Token::generate(TokenFormat::Random, black_box(&pan)));
    });
    c.bench_function("token_generate_pan_shaped", |b| {
        b.iter(|| Token::generate(TokenFormat::PanShaped, black_box(&pan)));
    });
}

fn crypto(c: &mut Criterion) {
    let material = KeyMaterial::generate();
    let dek = AeadKey::new(&material);
    let fingerprint = FingerprintKey::new(&material);
    let digits = b"4111111111111111";
    let aad = associated_data(
        "vault.pan.v1",
        &[
            b"merchant-1",
            b"tok_Q1w2E3r4T5y6U7i8O9p0As",
            &1u32.to_be_bytes(),
            b"",
        ],
    );
    c.bench_function("key_expand_aes256gcm", |b| {
        b.iter(|| AeadKey::new(black_box(&material)));
    });
    c.bench_function("fingerprint", |b| {
        b.iter(|| fingerprint.fingerprint(black_box(digits)));
    });
    c.bench_function("associated_data", |b| {
        b.iter(|| {
            associated_data(
                "vault.pan.v1",
                &[
                    b"merchant-1",
                    black_box(b"tok_Q1w2E3r4T5y6U7i8O9p0As"),
                    b"\0\0\0\x01",
                    b"",
                ],
            )
        });
    });
    c.bench_function("seal_pan", |b| {
        b.iter(|| dek.seal(black_box(&aad), black_box(digits)));
    });
    let sealed = dek.seal(&aad, digits);
    c.bench_function("open_pan", |b| {
        b.iter(|| {
            dek.open(
                black_box(&aad),
                &sealed.nonce,
                black_box(&sealed.ciphertext),
            )
        });
    });
}

fn audit(c: &mut Criterion) {
    let entry = Entry {
        writer: "20261123T120000Z-0badc0de".to_owned(),
        seq: 1_234_567,
        at: "2026-11-23T12:00:00.123456Z".to_owned(),
        caller: "spiffe://vault.example/payments".to_owned(),
        origin: "10.0.0.7:51234".to_owned(),
        event: "detokenize".to_owned(),
        detail: None,
        outcome: "success".to_owned(),
        resource: "merchant/merchant-1/token/tok_Q1w2E3r4T5y6U7i8O9p0As".to_owned(),
        merchant_id: Some("merchant-1".to_owned()),
        token: Some("tok_Q1w2E3r4T5y6U7i8O9p0As".to_owned()),
        request_id: "0193a8f2-6c1e-7b3d-9f00-5a1b2c3d4e5f".to_owned(),
        reason: Some("refund 42".to_owned()),
        prev_hash: [7; 32],
        hash: [0; 32],
    };
    let bytes = [0x5a_u8; 320];
    c.bench_function("sha256_320_bytes", |b| {
        b.iter(|| vault_crypto::sha256(black_box(&bytes)));
    });
    c.bench_function("audit_entry_hash", |b| {
        b.iter(|| black_box(&entry).compute_hash());
    });
    c.bench_function("audit_entry_clone_and_hash", |b| {
        b.iter(|| {
            let mut copy = black_box(&entry).clone();
            copy.hash = copy.compute_hash();
            copy
        });
    });
}

fn forward(c: &mut Criterion) {
    use std::collections::BTreeMap;
    use vault_core::forward::mask::mask_card;
    use vault_core::forward::path::check_path;
    use vault_core::forward::template::{CardValues, Template};
    use vault_core::forward::{ContentType, TemplateSpec};

    let template = Template::parse(&TemplateSpec {
        content_type: ContentType::Json,
        body: r#"{"card":{"number":"{{card.number}}","exp_month":"{{card.exp_month}}","exp_year":{{card.exp_year}}},"amount":{{var.amount}},"order":"{{var.order}}"}"#.to_owned(),
    })
    .unwrap_or_else(|_| unreachable!());
    let variables = BTreeMap::from([
        ("amount".to_owned(), "1999".to_owned()),
        ("order".to_owned(), "ord_\"42\"".to_owned()),
    ]);
    let card = CardValues {
        number: "4111111111111111",
        expiry: Some((7, 2031)),
    };
    c.bench_function("forward_render_json", |b| {
        b.iter(|| template.render(black_box(&card), black_box(&variables)));
    });
    c.bench_function("forward_check_path", |b| {
        b.iter(|| {
            check_path(black_box(
                "/v1/payments/pay_3MtwBwLkdIwHu7ix28a3tqPa/capture",
            ))
        });
    });
    // A 64 KiB JSON answer (the default cap) echoing the card once, near its end.
    let mut answer = String::from("{\"items\":[");
    while answer.len() < 64 * 1024 - 64 {
        answer.push_str("{\"id\":\"it_123456\",\"qty\":2,\"price\":1999},");
    }
    answer.push_str("{}],\"card\":\"4111 1111 1111 1111\"}");
    c.bench_function("forward_mask_64k", |b| {
        b.iter(|| mask_card(black_box(answer.as_bytes()), "4111111111111111", 3));
    });
}

criterion_group!(benches, pan_and_token, crypto, audit, forward);
criterion_main!(benches);
