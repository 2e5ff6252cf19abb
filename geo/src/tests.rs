use super::*;
use cascade_geo_testdb as writer;

fn test_db(dir: &Path) -> PathBuf {
    let csv = include_str!("../testdata/countries.csv");
    let bytes = writer::build_from_csv(csv, 1_700_000_000).unwrap();
    let path = dir.join("test.mmdb");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn lookups_against_the_project_database() {
    let dir = tempfile::tempdir().unwrap();
    let geo = Geo::open(&test_db(dir.path())).unwrap();
    let cc = |ip: &str| geo.lookup(ip.parse().unwrap()).country;
    assert_eq!(cc("127.0.0.2").as_deref(), Some("IN"));
    assert_eq!(cc("127.0.0.3").as_deref(), Some("US"));
    assert_eq!(cc("198.51.100.77").as_deref(), Some("US"));
    assert_eq!(cc("203.0.113.1").as_deref(), Some("NP"));
    assert_eq!(cc("::1").as_deref(), Some("GB"));
    assert_eq!(cc("2001:db8:2::5").as_deref(), Some("DE"));
    assert_eq!(cc("2001:db8:1:ffff::1").as_deref(), Some("IN"));
    // Unknown: nothing stored there.
    assert_eq!(cc("127.0.0.9"), None);
    assert_eq!(cc("8.8.8.8"), None);
    assert_eq!(cc("2001:db8:3::1"), None);
    let (kind, epoch) = geo.describe().unwrap();
    assert_eq!(
        (kind.as_str(), epoch),
        ("Cascade-Test-Country", 1_700_000_000)
    );
}

#[test]
fn a_corrupt_or_truncated_file_is_refused_and_the_old_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = test_db(dir.path());
    let geo = Geo::open(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    // Truncated, replaced by rename as the runbook says.
    let tmp = dir.path().join("new.mmdb");
    std::fs::write(&tmp, &good[..good.len() / 2]).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(geo.reload().is_err());
    assert_eq!(
        geo.lookup("127.0.0.2".parse().unwrap()).country.as_deref(),
        Some("IN")
    );
    // Corrupt in the data section.
    let mut bad = good.clone();
    let tree_end = bad.windows(16).position(|w| w == [0u8; 16]).unwrap();
    for b in &mut bad[tree_end + 16..tree_end + 40] {
        *b = 0xff;
    }
    std::fs::write(&tmp, &bad).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(geo.reload().is_err());
    assert_eq!(
        geo.lookup("127.0.0.3".parse().unwrap()).country.as_deref(),
        Some("US")
    );
    // A good replacement is taken.
    let csv = "127.0.0.2/32,FR\n";
    std::fs::write(&tmp, writer::build_from_csv(csv, 1).unwrap()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    geo.reload().unwrap();
    assert_eq!(
        geo.lookup("127.0.0.2".parse().unwrap()).country.as_deref(),
        Some("FR")
    );
    assert!(Geo::open(&dir.path().join("missing.mmdb")).is_err());
}

#[test]
fn rules() {
    let title = CountryRule {
        allow: vec!["IN".into(), "NP".into()],
        deny: vec![],
    };
    let allow = UnknownPolicy::Allow;
    assert_eq!(
        decide(Some("IN"), "/vod/a/x", &[], Some(&title), allow),
        Verdict::Allow
    );
    assert_eq!(
        decide(Some("US"), "/vod/a/x", &[], Some(&title), allow),
        Verdict::Block {
            country: "US".into(),
            rule: "title:allow".into()
        }
    );
    let deny = CountryRule {
        allow: vec![],
        deny: vec!["US".into(), "GB".into()],
    };
    assert_eq!(
        decide(Some("IN"), "/vod/a/x", &[], Some(&deny), allow),
        Verdict::Allow
    );
    assert_eq!(
        decide(Some("GB"), "/vod/a/x", &[], Some(&deny), allow),
        Verdict::Block {
            country: "GB".into(),
            rule: "title:deny".into()
        }
    );
    // Unknown countries follow the policy, but only where a rule applies.
    assert_eq!(
        decide(None, "/vod/a/x", &[], Some(&title), allow),
        Verdict::Allow
    );
    assert_eq!(
        decide(None, "/vod/a/x", &[], Some(&title), UnknownPolicy::Deny),
        Verdict::Block {
            country: "unknown".into(),
            rule: "unknown".into()
        }
    );
    assert_eq!(
        decide(None, "/vod/a/x", &[], None, UnknownPolicy::Deny),
        Verdict::Allow
    );
    // Path rules apply by prefix, before the title's.
    let paths = vec![PathRule {
        prefix: "/vod/final/".into(),
        allow: vec!["IN".into()],
        deny: vec![],
    }];
    assert_eq!(
        decide(Some("NP"), "/vod/final/x", &paths, Some(&title), allow),
        Verdict::Block {
            country: "NP".into(),
            rule: "path:/vod/final/:allow".into()
        }
    );
    assert_eq!(
        decide(Some("NP"), "/vod/other/x", &paths, Some(&title), allow),
        Verdict::Allow
    );
    assert_eq!(CountryRule::parse_list("in, np").unwrap(), vec!["IN", "NP"]);
    assert!(CountryRule::parse_list("IND").is_err());
}

#[test]
fn client_addresses() {
    let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // An untrusted peer's headers are ignored.
    assert_eq!(
        client_ip(ip("203.0.113.9"), &["1.2.3.4"], &[], &trusted),
        ip("203.0.113.9")
    );
    // From a trusted proxy: the right-most untrusted address.
    assert_eq!(
        client_ip(
            ip("10.0.0.1"),
            &["1.2.3.4, 5.6.7.8, 10.0.0.7"],
            &[],
            &trusted
        ),
        ip("5.6.7.8")
    );
    assert_eq!(
        client_ip(ip("10.0.0.1"), &["1.2.3.4", "5.6.7.8"], &[], &trusted),
        ip("5.6.7.8")
    );
    assert_eq!(
        client_ip(
            ip("::1"),
            &[],
            &["for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\""],
            &trusted
        ),
        ip("2001:db8::1")
    );
    // Garbage and all-trusted chains.
    assert_eq!(
        client_ip(ip("10.0.0.1"), &["garbage"], &[], &trusted),
        ip("10.0.0.1")
    );
    assert_eq!(
        client_ip(ip("10.0.0.1"), &["10.0.0.2, 10.0.0.3"], &[], &trusted),
        ip("10.0.0.2")
    );
}

#[test]
fn unknown_countries_are_refused_by_default_where_an_allow_list_applies() {
    let listed = CountryRule {
        allow: vec!["IN".into()],
        deny: vec![],
    };
    let denied = CountryRule {
        allow: vec![],
        deny: vec!["US".into()],
    };
    let default = UnknownPolicy::default();
    assert_eq!(default, UnknownPolicy::AllowList);
    assert_eq!(
        decide(None, "/vod/a/x", &[], Some(&listed), default),
        Verdict::Block {
            country: "unknown".into(),
            rule: "unknown".into()
        }
    );
    // Where only deny-lists apply, an unknown viewer is not on them.
    assert_eq!(
        decide(None, "/vod/a/x", &[], Some(&denied), default),
        Verdict::Allow
    );
    // An allow-list on the path counts as well.
    let paths = vec![PathRule {
        prefix: "/vod/final/".into(),
        allow: vec!["IN".into()],
        deny: vec![],
    }];
    assert!(matches!(
        decide(None, "/vod/final/x", &paths, Some(&denied), default),
        Verdict::Block { .. }
    ));
    // Configured `allow` keeps the old behaviour.
    assert_eq!(
        decide(None, "/vod/a/x", &[], Some(&listed), UnknownPolicy::Allow),
        Verdict::Allow
    );
    let parsed: UnknownPolicy = serde_json::from_str("\"allowlist\"").expect("parses");
    assert_eq!(parsed, UnknownPolicy::AllowList);
}
