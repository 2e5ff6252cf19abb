//! Country lookup cost against the project's test database, next to the
//! decision that follows it.
//!
//!     cargo bench -p cascade-benches --bench geo

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use cascade_geo::{decide, CountryRule, Geo, UnknownPolicy};
use cascade_geo_testdb as writer;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    // A database of 4,096 /24 networks over the test data, so the tree has depth.
    let mut csv = String::from(include_str!("../../geo/testdata/countries.csv"));
    for i in 0..4096u32 {
        let cc = ["IN", "US", "NP", "DE", "GB", "FR", "BR", "JP"][(i % 8) as usize];
        csv.push_str(&format!("10.{}.{}.0/24,{cc}\n", i / 256, i % 256));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.mmdb");
    std::fs::write(&path, writer::build_from_csv(&csv, 1).unwrap()).unwrap();
    let geo = Geo::open(&path).unwrap();
    let v4: IpAddr = "10.7.42.9".parse().unwrap();
    let v6: IpAddr = "2001:db8:2::77".parse().unwrap();
    let miss: IpAddr = "8.8.8.8".parse().unwrap();
    assert_eq!(geo.lookup(v4).country.as_deref(), Some("NP"));

    c.bench_function("lookup IPv4 (found)", |b| {
        b.iter(|| geo.lookup(black_box(v4)))
    });
    c.bench_function("lookup IPv6 (found)", |b| {
        b.iter(|| geo.lookup(black_box(v6)))
    });
    c.bench_function("lookup IPv4 (unknown)", |b| {
        b.iter(|| geo.lookup(black_box(miss)))
    });
    let rule = CountryRule {
        allow: vec!["IN".into(), "NP".into()],
        deny: vec![],
    };
    c.bench_function("decide (title allow list)", |b| {
        b.iter(|| {
            decide(
                black_box(Some("US")),
                "/vod/a/1.m4s",
                &[],
                Some(&rule),
                UnknownPolicy::Allow,
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
