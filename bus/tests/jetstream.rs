//! The JetStream bus against a real NATS server with JetStream: the one at
//! `CASCADE_TEST_NATS` (default 127.0.0.1:4222, which `make test` starts).

use std::time::Duration;

use cascade_bus::{Bus, JetStreamBus, JetStreamConfig};
use futures::StreamExt;

fn url() -> String {
    std::env::var("CASCADE_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A bus, and a tag for subjects of this test alone.
async fn bus() -> (JetStreamBus, String) {
    let tag = format!("t{}", std::process::id() ^ rand_u32());
    let cfg = JetStreamConfig {
        url: url(),
        client_name: "cascade-bus-test".into(),
        ..JetStreamConfig::default()
    };
    // JetStream allows one stream per subject space: tests share the
    // stream and keep apart by subject.
    (
        JetStreamBus::connect(&cfg)
            .await
            .expect("NATS with JetStream"),
        tag,
    )
}

fn rand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[tokio::test]
async fn stored_events_follow_replay_and_dedupe_on_jetstream() {
    let (bus, tag) = bus().await;
    let subject = format!("cascade.rt.test.{tag}");
    let a = bus.publish(&subject, "a".into(), None).await.unwrap();
    let mut f = bus.follow(&subject, Some(a - 1)).await.unwrap();
    let b = bus
        .publish(&subject, "b".into(), Some(&format!("{tag}-b")))
        .await
        .unwrap();
    let again = bus
        .publish(&subject, "b".into(), Some(&format!("{tag}-b")))
        .await
        .unwrap();
    assert_eq!(b, again, "a duplicate id is stored once");
    let got: Vec<(u64, bytes::Bytes)> = (&mut f.events)
        .take(2)
        .map(|e| {
            let e = e.unwrap();
            (e.seq, e.payload)
        })
        .collect()
        .await;
    assert_eq!(got, vec![(a, "a".into()), (b, "b".into())]);
    let r = bus.replay(&subject, a, 10).await.unwrap();
    assert_eq!(r.events.len(), 1);
    assert_eq!(r.events[0].seq, b);
    let none = bus.replay(&subject, b, 10).await.unwrap();
    assert!(none.events.is_empty());
    let mut notices = bus
        .notices(&format!("cascade.now.test.{tag}"))
        .await
        .unwrap();
    bus.notify(&format!("cascade.now.test.{tag}"), "n".into())
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), notices.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(n.payload, bytes::Bytes::from("n"));
}

#[tokio::test]
async fn a_cluster_is_several_urls_and_any_that_answers_will_do() {
    // The first URL has nothing behind it; the client goes on to the next.
    let cfg = JetStreamConfig {
        url: format!("nats://127.0.0.1:1,{}", url()),
        client_name: "cascade-bus-test".into(),
        ..JetStreamConfig::default()
    };
    let bus = JetStreamBus::connect(&cfg)
        .await
        .expect("the second answers");
    assert!(bus.last_seq().await.is_ok());
    let bad = JetStreamConfig {
        url: "nats://127.0.0.1:4222,::not a url::".into(),
        ..JetStreamConfig::default()
    };
    assert!(JetStreamBus::connect(&bad).await.is_err());
}
