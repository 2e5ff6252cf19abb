//! Token verification cost: the work an edge does on every media request.
//!
//!     cargo bench -p cascade-benches --bench token

#![allow(clippy::unwrap_used)]

use cascade_token::{sign, Algorithm, Claims, Key, Verifier};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const NOW: u64 = 1_700_000_000;

fn bench(c: &mut Criterion) {
    let key = Key::from_hex("k1", "52a152a152a152a152a152a152a152a1").unwrap();
    let claims = Claims {
        start: Some(NOW - 10),
        expires: NOW + 3600,
        acl: vec!["/vod/abc123/*".into()],
        id: Some("session-42".into()),
        ..Claims::default()
    };
    let token = sign(&key, &claims);
    let path = "/vod/abc123/v0/17.m4s";
    let one = Verifier {
        cdn_keys: vec![key.clone()],
        ..Verifier::default()
    };
    // During a rotation the matching key may be the second one tried.
    let other = Key::from_hex("k0", "00112233445566778899aabbccddeeff").unwrap();
    let two = Verifier {
        cdn_keys: vec![other, key.clone()],
        ..Verifier::default()
    };
    assert!(one.verify(&token, path, None, NOW).is_ok());
    assert!(two.verify(&token, path, None, NOW).is_ok());

    c.bench_function("verify ACL token, sha256, 1 key", |b| {
        b.iter(|| {
            one.verify(black_box(&token), black_box(path), None, NOW)
                .unwrap()
        })
    });
    c.bench_function("verify ACL token, sha256, 2 keys (rotation)", |b| {
        b.iter(|| {
            two.verify(black_box(&token), black_box(path), None, NOW)
                .unwrap()
        })
    });
    let md5 = key.clone().with_algorithm(Algorithm::Md5);
    let md5_token = sign(&md5, &claims);
    let v_md5 = Verifier {
        cdn_keys: vec![md5],
        ..Verifier::default()
    };
    c.bench_function("verify ACL token, md5, 1 key", |b| {
        b.iter(|| {
            v_md5
                .verify(black_box(&md5_token), black_box(path), None, NOW)
                .unwrap()
        })
    });
    c.bench_function("parse only", |b| {
        b.iter(|| cascade_token::parse(black_box(&token)).unwrap())
    });
    let msg = b"st=1699999990~exp=1700003600~acl=/vod/abc123/*~id=session-42";
    let rk = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0x52; 16]);
    c.bench_function("ring HMAC-SHA256 alone, 60 bytes", |b| {
        b.iter(|| ring::hmac::sign(&rk, black_box(msg)))
    });
    c.bench_function("sign ACL token, sha256", |b| {
        b.iter(|| sign(black_box(&key), black_box(&claims)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
