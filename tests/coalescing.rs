//! A flash crowd on one uncached segment makes one fetch per tier.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_viewers_one_origin_fetch() {
    let stack = common::Stack::start().await;
    let asset = common::ingest_clip(&stack, 2).await;
    let token = common::sign_for(&asset);
    let url = Arc::new(format!(
        "{}/vod/{asset}/v0/1.m4s?__token__={token}",
        stack.edge_url
    ));
    let before = stack.origin.mezzanine_bytes();
    assert_eq!(before, (0, 0), "nothing played yet");
    assert_eq!(stack.origin.mezzanine_requests(), 0);

    let client = common::client();
    let mut tasks = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let r = client.get(url.as_str()).send().await.unwrap();
            let status = r.status().as_u16();
            let cs = r
                .headers()
                .get("cache-status")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (status, cs, r.bytes().await.unwrap())
        }));
    }
    let mut bodies = std::collections::HashSet::new();
    let mut leaders = 0;
    for t in tasks {
        let (status, cs, body) = t.await.unwrap();
        assert_eq!(status, 200, "{cs}");
        // Every other answer is a hit or joined the one fetch (`collapsed`).
        let edge_entry = cs.rsplit(", ").next().unwrap_or("");
        leaders +=
            usize::from(edge_entry.contains("fwd=miss") && !edge_entry.contains("collapsed"));
        bodies.insert(body);
    }
    assert_eq!(leaders, 1, "exactly one request fetched");
    assert_eq!(bodies.len(), 1, "every viewer got the same bytes");
    // The origin answered one request (the shield's slice holding the
    // segment), and no byte twice.
    assert_eq!(stack.origin.mezzanine_requests(), 1);
    let (served, repeated) = stack.origin.mezzanine_bytes();
    assert!(served >= bodies.into_iter().next().unwrap().len() as u64);
    assert_eq!(repeated, 0);
    stack.shutdown().await;
}
