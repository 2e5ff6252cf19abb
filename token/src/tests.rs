use super::*;

const KEY: &str = "52a152a152a152a152a152a152a152a1";
const NOW: u64 = 1_700_001_000;

fn key() -> Key {
    Key::from_hex("k1", KEY).unwrap()
}

fn verifier(keys: Vec<Key>) -> Verifier {
    Verifier {
        cdn_keys: keys,
        partners: HashMap::new(),
        skew_secs: 0,
    }
}

/// Vectors made with Akamai's reference library (EdgeAuth-Token-Python
/// 0.3.2) for the key above; our signer must produce them byte for byte and
/// our verifier must accept them.
#[test]
fn reference_vectors() {
    let cases: Vec<(Key, Claims, &str)> = vec![
        (
            key(),
            Claims { start: Some(1_700_000_000), expires: 1_700_003_600, acl: vec!["/vod/abc/*".into()], ..Claims::default() },
            "st=1700000000~exp=1700003600~acl=/vod/abc/*~hmac=fcd393079b1c5384c7f1c7200aed4acdc4d23d499ca9c2b5e7aadd6cc3fd53bc",
        ),
        (
            key().with_escape_early(true),
            Claims {
                ip: Some("1.2.3.4".into()),
                expires: 1_700_003_600,
                acl: vec!["/vod/abc/*".into()],
                id: Some("s 1".into()),
                data: Some("hello world/x".into()),
                ..Claims::default()
            },
            "ip=1.2.3.4~exp=1700003600~acl=/vod/abc/*~id=s+1~data=hello+world%2fx~hmac=424d6ba57d32f4b568f22693bbc0ffb38a9730cef74a9ba116fa2e7f2eca7e82",
        ),
        (
            key(),
            Claims {
                ip: Some("1.2.3.4".into()),
                expires: 1_700_003_600,
                acl: vec!["/vod/abc/*".into()],
                id: Some("s 1".into()),
                data: Some("hello world/x".into()),
                ..Claims::default()
            },
            "ip=1.2.3.4~exp=1700003600~acl=/vod/abc/*~id=s 1~data=hello world/x~hmac=530e617b8e4ffecbcb04c74f6a7876dfcab5cbcb0134b66e32af6c73ee5774ba",
        ),
        (
            key(),
            Claims { expires: 1_700_003_600, acl: vec!["/vod/a/*".into(), "/vod/b/*".into()], ..Claims::default() },
            "exp=1700003600~acl=/vod/a/*!/vod/b/*~hmac=fbfe13c54f64e89dfb9ebdc77375f1c1d7bcb9f684b95ffa75172a6094def593",
        ),
        (
            key().with_salt(Some("pepper".into())),
            Claims { expires: 1_700_003_600, acl: vec!["/vod/abc/*".into()], ..Claims::default() },
            "exp=1700003600~acl=/vod/abc/*~hmac=49519c26c16dece6baef0f464fb933d3876fa1551bf34b04a595595a9258f3e0",
        ),
        (
            key().with_algorithm(Algorithm::Sha1),
            Claims { expires: 1_700_003_600, acl: vec!["/vod/abc/*".into()], ..Claims::default() },
            "exp=1700003600~acl=/vod/abc/*~hmac=8d241e71f109ce106d743bf6515ad4abb1ab783a",
        ),
        (
            key().with_algorithm(Algorithm::Md5),
            Claims { expires: 1_700_003_600, acl: vec!["/vod/abc/*".into()], ..Claims::default() },
            "exp=1700003600~acl=/vod/abc/*~hmac=b46cf551dabc0f7db5b94df98dbe41be",
        ),
        (
            key(),
            Claims { start: Some(1_700_000_000), expires: 1_700_003_600, url: Some("/vod/abc/master.m3u8".into()), ..Claims::default() },
            "st=1700000000~exp=1700003600~hmac=c62395cc9a34650b04b629f7abf711cdf46dbb6a86a8317f31e8b241b21fda85",
        ),
    ];
    for (k, claims, want) in cases {
        assert_eq!(sign(&k, &claims), want, "{claims:?}");
        let path = claims
            .url
            .clone()
            .unwrap_or_else(|| claims.acl[0].trim_end_matches('*').to_string() + "master.m3u8");
        let ip = claims.ip.as_ref().map(|i| i.parse().unwrap());
        let v = verifier(vec![k]);
        assert_eq!(v.verify(want, &path, ip, NOW).unwrap().kid, "k1", "{want}");
    }
}

/// The escape-early URL token of the reference library: the path is
/// escaped (`/` as `%2f`, space as `+`) before signing.
#[test]
fn escape_early_url_token() {
    let k = key().with_escape_early(true);
    let claims = Claims {
        expires: 1_700_003_600,
        url: Some("/vod/a b/master.m3u8?x=1".into()),
        ..Claims::default()
    };
    let t = sign(&k, &claims);
    assert_eq!(
        t,
        "exp=1700003600~hmac=20825413bc08b435fe670810acba1ac5bda5747faef2ff12b22705429eaee22b"
    );
    assert_eq!(
        escape_early("/vod/a b/master.m3u8?x=1"),
        "%2fvod%2fa+b%2fmaster.m3u8%3fx%3d1"
    );
    assert!(verifier(vec![k])
        .verify(&t, "/vod/a b/master.m3u8?x=1", None, NOW)
        .is_ok());
}

#[test]
fn times_and_skew() {
    let k = key();
    let t = sign(
        &k,
        &Claims {
            start: Some(NOW + 100),
            expires: NOW + 200,
            acl: vec!["/*".into()],
            ..Claims::default()
        },
    );
    let mut v = verifier(vec![k.clone()]);
    assert_eq!(
        v.verify(&t, "/vod/x", None, NOW),
        Err(Rejection::NotYetValid)
    );
    assert_eq!(
        v.verify(&t, "/vod/x", None, NOW + 200),
        Err(Rejection::Expired)
    );
    assert!(v.verify(&t, "/vod/x", None, NOW + 150).is_ok());
    v.skew_secs = 120;
    assert!(v.verify(&t, "/vod/x", None, NOW).is_ok());
    assert!(v.verify(&t, "/vod/x", None, NOW + 250).is_ok());
    assert_eq!(
        v.verify(&t, "/vod/x", None, NOW + 320),
        Err(Rejection::Expired)
    );
}

#[test]
fn ip_binding() {
    let k = key();
    let t = sign(
        &k,
        &Claims {
            ip: Some("2001:db8::1".into()),
            expires: NOW + 60,
            acl: vec!["/*".into()],
            ..Claims::default()
        },
    );
    let v = verifier(vec![k]);
    assert!(v
        .verify(&t, "/a", Some("2001:db8::1".parse().unwrap()), NOW)
        .is_ok());
    assert_eq!(
        v.verify(&t, "/a", Some("2001:db8::2".parse().unwrap()), NOW),
        Err(Rejection::IpMismatch)
    );
    assert_eq!(v.verify(&t, "/a", None, NOW), Err(Rejection::IpMismatch));
}

#[test]
fn acls_and_urls() {
    let k = key();
    let v = verifier(vec![k.clone()]);
    let acl = |pats: &[&str]| {
        sign(
            &k,
            &Claims {
                expires: NOW + 60,
                acl: pats.iter().map(|s| s.to_string()).collect(),
                ..Claims::default()
            },
        )
    };
    let t = acl(&["/vod/a/*"]);
    assert!(v.verify(&t, "/vod/a/master.m3u8", None, NOW).is_ok());
    // A path that only shares a prefix string is outside.
    assert_eq!(
        v.verify(&t, "/vod/ab/master.m3u8", None, NOW),
        Err(Rejection::AclMismatch)
    );
    assert_eq!(
        v.verify(&t, "/vod/b/master.m3u8", None, NOW),
        Err(Rejection::AclMismatch)
    );
    // As written, `/vod/a*` does cover `/vod/ab`.
    let t = acl(&["/vod/a*"]);
    assert!(v.verify(&t, "/vod/ab/x", None, NOW).is_ok());
    let t = acl(&["/vod/a/*", "/vod/b/*"]);
    assert!(v.verify(&t, "/vod/b/x", None, NOW).is_ok());
    assert_eq!(
        v.verify(&t, "/vod/c/x", None, NOW),
        Err(Rejection::AclMismatch)
    );
    // A URL token is good for its URL only: elsewhere the MAC fails.
    let t = sign(
        &k,
        &Claims {
            expires: NOW + 60,
            url: Some("/vod/a/v0.m3u8".into()),
            ..Claims::default()
        },
    );
    assert!(v.verify(&t, "/vod/a/v0.m3u8", None, NOW).is_ok());
    assert_eq!(
        v.verify(&t, "/vod/a/v1.m3u8", None, NOW),
        Err(Rejection::BadSignature)
    );
}

#[test]
fn key_rotation_and_unknown_keys() {
    let old = Key::from_hex("old", KEY).unwrap();
    let new = Key::from_hex("new", "00112233445566778899aabbccddeeff").unwrap();
    let claims = Claims {
        expires: NOW + 60,
        acl: vec!["/*".into()],
        ..Claims::default()
    };
    let (t_old, t_new) = (sign(&old, &claims), sign(&new, &claims));
    let both = verifier(vec![new.clone(), old.clone()]);
    assert_eq!(both.verify(&t_old, "/x", None, NOW).unwrap().kid, "old");
    assert_eq!(both.verify(&t_new, "/x", None, NOW).unwrap().kid, "new");
    let only_new = verifier(vec![new]);
    assert_eq!(
        only_new.verify(&t_old, "/x", None, NOW),
        Err(Rejection::BadSignature)
    );
    assert_eq!(
        verifier(vec![]).verify(&t_old, "/x", None, NOW),
        Err(Rejection::UnknownKey)
    );
}

#[test]
fn partner_keys_and_scope() {
    let pk = Key::from_hex("acme-1", "0123456789abcdef0123456789abcdef").unwrap();
    let mut v = verifier(vec![key()]);
    v.partners.insert(
        "acme".into(),
        Partner {
            keys: vec![pk.clone()],
            scope: vec!["/vod/acme/*".into()],
        },
    );
    let claims = |acl: &str| Claims {
        expires: NOW + 60,
        acl: vec![acl.into()],
        data: Some("kid=acme".into()),
        ..Claims::default()
    };
    let g = v
        .verify(
            &sign(&pk, &claims("/vod/acme/t1/*")),
            "/vod/acme/t1/master.m3u8",
            None,
            NOW,
        )
        .unwrap();
    assert_eq!(
        (g.kid.as_str(), g.partner.as_deref()),
        ("acme-1", Some("acme"))
    );
    // Outside the partner's scope, even though the signature is good.
    assert_eq!(
        v.verify(
            &sign(&pk, &claims("/vod/*")),
            "/vod/acme/t1/master.m3u8",
            None,
            NOW
        ),
        Err(Rejection::AclMismatch)
    );
    // A partner token is checked against that partner's keys only.
    assert_eq!(
        v.verify(
            &sign(&key(), &claims("/vod/acme/*")),
            "/vod/acme/x",
            None,
            NOW
        ),
        Err(Rejection::BadSignature)
    );
    let other = Claims {
        data: Some("kid=nobody".into()),
        ..claims("/vod/acme/*")
    };
    assert_eq!(
        v.verify(&sign(&pk, &other), "/vod/acme/x", None, NOW),
        Err(Rejection::UnknownKey)
    );
    // With escape-early the data field arrives as kid%3dacme and still names the partner.
    let pk_e = pk.clone().with_escape_early(true);
    v.partners.get_mut("acme").unwrap().keys.push(pk_e.clone());
    assert!(v
        .verify(
            &sign(&pk_e, &claims("/vod/acme/*")),
            "/vod/acme/x",
            None,
            NOW
        )
        .is_ok());
}

#[test]
fn malformed_tokens() {
    let v = verifier(vec![key()]);
    let good = sign(
        &key(),
        &Claims {
            expires: NOW + 60,
            acl: vec!["/*".into()],
            ..Claims::default()
        },
    );
    assert!(v.verify(&good, "/x", None, NOW).is_ok());
    for (bad, why) in [
        ("", Rejection::Missing),
        ("acl=/*~hmac=00", Rejection::Malformed),
        ("exp=abc~acl=/*~hmac=00", Rejection::Malformed),
        ("exp=-5~acl=/*~hmac=00", Rejection::Malformed),
        ("exp=1~acl=/*~hmac=0", Rejection::Malformed),
        ("exp=1~acl=/*~hmac=zz", Rejection::Malformed),
        ("exp=1~acl=/*", Rejection::Malformed),
        ("exp=1~acl=/*~hmac=", Rejection::Malformed),
        ("exp=1~foo=bar~hmac=00", Rejection::Malformed),
        ("exp=1~exp=2~hmac=00", Rejection::Malformed),
        ("acl=/*~exp=1~hmac=00", Rejection::Malformed),
        ("exp1~hmac=00", Rejection::Malformed),
        ("hmac=00", Rejection::Malformed),
        ("exp=99999999999999999999~hmac=00", Rejection::Malformed),
    ] {
        assert_eq!(parse(bad).map(|_| ()), Err(why), "{bad:?}");
    }
    assert_eq!(
        parse(&"a".repeat(MAX_TOKEN_LEN + 1)).map(|_| ()),
        Err(Rejection::Malformed)
    );
    assert!(Key::from_hex("x", "abc").is_err());
    assert!(Key::from_hex("x", "zz").is_err());
    assert!(Key::from_hex("x", "0011").is_err());
    assert_eq!(
        parse_key_list("a:52a152a152a152a152a152a152a152a1, b:00112233445566778899aabbccddeeff")
            .unwrap()
            .len(),
        2
    );
    assert!(parse_key_list("nokid").is_err());
}

#[test]
fn key_debug_hides_the_secret() {
    let shown = format!("{:?}", key());
    assert!(!shown.contains("52a1") && !shown.contains("82,"), "{shown}");
}

#[test]
fn paths() {
    assert_eq!(
        normalize_path("/vod/a/master.m3u8").as_deref(),
        Some("/vod/a/master.m3u8")
    );
    assert_eq!(normalize_path("/vod/%61/x").as_deref(), Some("/vod/a/x"));
    assert_eq!(normalize_path("/vod/a/").as_deref(), Some("/vod/a/"));
    for bad in [
        "vod/a",
        "/vod/../etc",
        "/vod/%2e%2e/etc",
        "/vod/%2E%2E/x",
        "/vod//a",
        "/vod/a%2fb",
        "/vod/a%5cb",
        "/vod/./a",
        "/vod/%00",
        "/vod/%zz",
        "/vod/%2",
        "/vod/a\\b",
        "/vod/%ff",
    ] {
        assert_eq!(normalize_path(bad), None, "{bad}");
    }
    assert!(acl_matches("/vod/*", "/vod/a/b/c"));
    assert!(acl_matches("/vod/*/master.m3u8", "/vod/a/master.m3u8"));
    assert!(!acl_matches("/vod/*/master.m3u8", "/vod/a/v0.m3u8"));
    assert!(acl_matches("*", "/anything"));
    assert!(!acl_matches("/vod/a", "/vod/ab"));
    assert!(scope_contains("/vod/*", "/vod/abc/*"));
    assert!(!scope_contains("/vod/*", "/vod*"));
    assert!(!scope_contains("/vod/*", "/*"));
    assert!(scope_contains("/vod/a", "/vod/a"));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn field() -> impl Strategy<Value = String> {
        // Printable text without the field and ACL separators.
        "[ -}]{0,24}".prop_map(|s| s.replace(['~', '!'], "_"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Sign, then verify, for random field values and both escape modes;
        /// then any single byte changed makes the token fail.
        #[test]
        fn round_trip_and_tamper(
            id in proptest::option::of(field()),
            data in proptest::option::of(field()),
            acl in "/[a-z0-9/]{0,20}",
            escape in any::<bool>(),
            salt in proptest::option::of("[a-z]{1,8}"),
            flip_at in any::<prop::sample::Index>(),
            flip_to in any::<u8>(),
        ) {
            // A data field that names a partner would be checked against partner keys.
            prop_assume!(!data.as_deref().is_some_and(|d| d.starts_with("kid=")));
            // Unescaped fields must not contain the token's own separators in escape-early-off mode.
            let k = key().with_escape_early(escape).with_salt(salt);
            let claims = Claims {
                start: Some(NOW - 10),
                expires: NOW + 60,
                acl: vec![format!("{acl}*")],
                id: id.filter(|s| !s.is_empty()),
                data: data.filter(|s| !s.is_empty()),
                ..Claims::default()
            };
            let t = sign(&k, &claims);
            let v = verifier(vec![k]);
            let path = format!("{acl}x");
            prop_assert!(v.verify(&t, &path, None, NOW).is_ok(), "{}", t);

            let mut bytes = t.clone().into_bytes();
            let i = flip_at.index(bytes.len());
            prop_assume!(bytes[i] != flip_to);
            bytes[i] = flip_to;
            if let Ok(tampered) = String::from_utf8(bytes) {
                // Lowercase and uppercase hex decode to the same MAC: not a change.
                prop_assume!(!tampered.eq_ignore_ascii_case(&t));
                prop_assert!(v.verify(&tampered, &path, None, NOW).is_err(), "{} accepted", tampered);
            }
        }

        /// The parser never panics on any text.
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = parse(&s);
            let _ = normalize_path(&s);
            let _ = unescape(&s);
        }
    }
}

#[test]
fn a_token_names_its_session() {
    let key = Key::from_hex("k1", "00112233445566778899aabbccddeeff").expect("key");
    let v = Verifier {
        cdn_keys: vec![key.clone()],
        ..Verifier::default()
    };
    let claims = |id: Option<&str>| Claims {
        expires: NOW + 60,
        acl: vec!["/vod/a/*".into()],
        id: id.map(str::to_string),
        ..Claims::default()
    };
    let with = sign(&key, &claims(Some("45ad18ad")));
    let grant = v.verify(&with, "/vod/a/x.m4s", None, NOW).expect("valid");
    assert_eq!(grant.session.as_deref(), Some("45ad18ad"));
    let without = sign(&key, &claims(None));
    let grant = v
        .verify(&without, "/vod/a/x.m4s", None, NOW)
        .expect("valid");
    assert_eq!(grant.session, None);
    assert_eq!(Rejection::Revoked.code(), "revoked");
    assert!(Rejection::ALL.contains(&Rejection::Revoked));
}
