//! The shipped configs parse, and bad ones are reported key by key.

#![allow(clippy::unwrap_used)]

use cascade_control::ControlConfig;
use cascade_edge::EdgeConfig;
use cascade_origin::OriginConfig;
use cascade_serve::config::load;
use cascade_shield::ShieldConfig;

fn deploy(name: &str) -> String {
    std::fs::read_to_string(format!("{}/deploy/{name}.toml", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn deploy_configs_parse() {
    let o: OriginConfig = load("origin", &deploy("origin"), vec![]).unwrap();
    assert_eq!(o.ladder.len(), 4);
    let s: ShieldConfig = load("shield", &deploy("shield"), vec![]).unwrap();
    assert_eq!(s.origins.len(), 1);
    // The shipped edge config expects its fleet credential from the environment.
    assert!(load::<EdgeConfig>("edge", &deploy("edge"), vec![]).is_err());
    let env = vec![("CASCADE_EDGE_FLEET_TOKEN".to_string(), "f".repeat(32))];
    let e: EdgeConfig = load("edge", &deploy("edge"), env).unwrap();
    assert_eq!(e.shields.len(), 1);
    assert_eq!(e.fleet_token.len(), 32);
    let c: ControlConfig = load("control", &deploy("control"), vec![]).unwrap();
    assert_eq!(c.nodes.len(), 3);
}

#[test]
fn every_error_is_reported_with_its_key() {
    let err = load::<EdgeConfig>(
        "edge",
        "listen = \"nowhere\"\nshields = [\"ftp://x\"]\ncache_memory_mib = \"lots\"\ncolour = 1\n",
        vec![],
    )
    .unwrap_err();
    let text = err.to_string();
    // Type errors and unknown keys come first, all at once.
    assert!(text.contains("cache_memory_mib"), "{text}");
    assert!(text.contains("colour"), "{text}");
    let err = load::<EdgeConfig>(
        "edge",
        "listen = \"nowhere\"\nshields = [\"ftp://x\"]\n",
        vec![],
    )
    .unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
    assert!(
        err.0[0].starts_with("listen:") && err.0[1].starts_with("shields[0]:"),
        "{err}"
    );

    let err = load::<OriginConfig>(
        "origin",
        "preset = \"quick\"\nladder = []\nsegment_secs = 0\n",
        vec![],
    )
    .unwrap_err();
    assert_eq!(err.0.len(), 3, "{err}");

    // TLS and HTTP/3: a listener needs its pair; limits have bounds.
    let err = load::<EdgeConfig>(
        "edge",
        "tls_listen = \"0.0.0.0:443\"\ntls_cert = \"\"\nh3_max_streams = 0\nh3_idle_secs = 0\nh3_max_header_bytes = 10\n",
        vec![],
    )
    .unwrap_err();
    let keys: Vec<&str> = err.0.iter().filter_map(|e| e.split(':').next()).collect();
    for key in [
        "tls_cert",
        "tls_key",
        "h3_max_streams",
        "h3_idle_secs",
        "h3_max_header_bytes",
    ] {
        assert!(keys.contains(&key), "{key} missing from {err}");
    }
    // The edge refuses to start on a key that does not match its certificate.
    let dir = tempfile::tempdir().unwrap();
    let a = cascade_serve::tls::generate(&["localhost"]).unwrap();
    let b = cascade_serve::tls::generate(&["localhost"]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &a.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &b.key_pem).unwrap();
    let err = cascade_serve::tls::CertStore::load(
        &dir.path().join("cert.pem"),
        &dir.path().join("key.pem"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("key and certificate"), "{err}");
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let err = cascade_serve::tls::CertStore::load(
        &dir.path().join("cert.pem"),
        &dir.path().join("key.pem"),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no PEM private key"), "{err}");

    // Environment overrides apply to single keys.
    let e: EdgeConfig = load(
        "edge",
        "",
        vec![("CASCADE_EDGE_LISTEN".into(), "127.0.0.1:9999".into())],
    )
    .unwrap();
    assert_eq!(e.listen, "127.0.0.1:9999");
}
