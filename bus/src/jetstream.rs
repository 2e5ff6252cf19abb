//! The fleet's bus: NATS JetStream. Stored events go to one stream
//! (`CASCADE_RT`, subjects `cascade.rt.>`), so that sequences are one
//! order across every subject and a follower resumes from the last one it
//! saw. Followers are ordered consumers, which re-create themselves after
//! a reconnect or a gap; notices are core NATS messages.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use async_nats::jetstream::{self as js, Context};
use bytes::Bytes;
use futures::StreamExt;

use crate::{
    check_filter, check_publish, Bus, BusError, Event, Events, Follow, Replay, MAX_PAYLOAD,
    NOTICE_PREFIX, STORED_PREFIX,
};

/// How long a publish may wait for JetStream's acknowledgement.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replay may wait for the messages it counted.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a JetStream bus is made with.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// `nats://host:port`, or several separated by commas (a cluster).
    pub url: String,
    /// The stream holding stored events.
    pub stream: String,
    /// How long stored events are kept (the replay window).
    pub retention: Duration,
    /// Most bytes the stream keeps; the oldest go first.
    pub max_bytes: i64,
    /// Copies of the stream in a cluster (1 on one server).
    pub replicas: usize,
    /// A name for this connection in the server's monitoring.
    pub client_name: String,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            url: "nats://127.0.0.1:4222".into(),
            stream: "CASCADE_RT".into(),
            retention: Duration::from_secs(24 * 3600),
            max_bytes: 1 << 30,
            replicas: 1,
            client_name: "cascade".into(),
        }
    }
}

/// The JetStream bus. Cloning shares the connection.
#[derive(Clone)]
pub struct JetStreamBus {
    client: async_nats::Client,
    js: Context,
    stream: String,
}

impl std::fmt::Debug for JetStreamBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamBus")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl JetStreamBus {
    /// Connects, and creates the stream if it is not there. The connection
    /// reconnects by itself for as long as the process runs.
    pub async fn connect(cfg: &JetStreamConfig) -> Result<JetStreamBus, BusError> {
        // A cluster is several URLs, comma-separated; the client reconnects
        // to whichever answers.
        let servers = cfg
            .url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BusError::Unavailable(format!("{}: {e}", cfg.url)))?;
        let client = async_nats::ConnectOptions::new()
            .name(&cfg.client_name)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("bus connected"),
                    async_nats::Event::Disconnected => tracing::warn!("bus disconnected"),
                    other => tracing::debug!(event = %other, "bus event"),
                }
            })
            .connect(servers)
            .await
            .map_err(|e| BusError::Unavailable(format!("cannot connect to {}: {e}", cfg.url)))?;
        let js = js::new(client.clone());
        js.get_or_create_stream(stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![format!("{STORED_PREFIX}>")],
            max_age: cfg.retention,
            max_bytes: cfg.max_bytes,
            max_message_size: MAX_PAYLOAD as i32,
            storage: StorageType::File,
            discard: DiscardPolicy::Old,
            num_replicas: cfg.replicas.max(1),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::Unavailable(format!("stream {}: {e}", cfg.stream)))?;
        Ok(JetStreamBus {
            client,
            js,
            stream: cfg.stream.clone(),
        })
    }

    async fn stream(&self) -> Result<stream::Stream, BusError> {
        self.js
            .get_stream(&self.stream)
            .await
            .map_err(|e| BusError::Unavailable(e.to_string()))
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

fn to_event(m: &js::Message) -> Result<Event, BusError> {
    let info = m.info().map_err(unavailable)?;
    Ok(Event {
        seq: info.stream_sequence,
        subject: m.subject.to_string(),
        payload: m.payload.clone(),
    })
}

#[async_trait::async_trait]
impl Bus for JetStreamBus {
    async fn publish(
        &self,
        subject: &str,
        payload: Bytes,
        dedupe: Option<&str>,
    ) -> Result<u64, BusError> {
        check_publish(STORED_PREFIX, subject, &payload)?;
        let subject = subject.to_string();
        let ack = match dedupe {
            Some(id) => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
                self.js
                    .publish_with_headers(subject, headers, payload)
                    .await
            }
            None => self.js.publish(subject, payload).await,
        }
        .map_err(unavailable)?;
        let ack = tokio::time::timeout(PUBLISH_TIMEOUT, ack)
            .await
            .map_err(|_| BusError::Unavailable("no acknowledgement from JetStream".into()))?
            .map_err(unavailable)?;
        Ok(ack.sequence)
    }

    async fn notify(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        check_publish(NOTICE_PREFIX, subject, &payload)?;
        self.client
            .publish(subject.to_string(), payload)
            .await
            .map_err(unavailable)
    }

    async fn follow(&self, filter: &str, after: Option<u64>) -> Result<Follow, BusError> {
        check_filter(STORED_PREFIX, filter)?;
        let mut stream = self.stream().await?;
        let after = match after {
            Some(a) => a,
            None => {
                stream
                    .info()
                    .await
                    .map_err(unavailable)?
                    .state
                    .last_sequence
            }
        };
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter.to_string(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let messages = consumer.messages().await.map_err(unavailable)?;
        let events = messages.map(|m| match m {
            Ok(m) => to_event(&m),
            Err(e) => Err(unavailable(e)),
        });
        Ok(Follow {
            from: after + 1,
            events: Box::pin(events),
        })
    }

    async fn notices(&self, filter: &str) -> Result<Events, BusError> {
        check_filter(NOTICE_PREFIX, filter)?;
        let sub = self
            .client
            .subscribe(filter.to_string())
            .await
            .map_err(unavailable)?;
        Ok(Box::pin(sub.map(|m| {
            Ok(Event {
                seq: 0,
                subject: m.subject.to_string(),
                payload: m.payload,
            })
        })))
    }

    async fn replay(&self, filter: &str, after: u64, limit: usize) -> Result<Replay, BusError> {
        check_filter(STORED_PREFIX, filter)?;
        let stream = self.stream().await?;
        let mut consumer = stream
            .create_consumer(pull::Config {
                filter_subject: filter.to_string(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: Duration::from_secs(10),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let pending = consumer.info().await.map_err(unavailable)?.num_pending;
        let want = (pending as usize).min(limit);
        let mut events = Vec::with_capacity(want.min(1024));
        let deadline = tokio::time::Instant::now() + REPLAY_TIMEOUT;
        while events.len() < want {
            let batch = consumer
                .fetch()
                .max_messages(want - events.len())
                .expires(Duration::from_secs(1))
                .messages()
                .await
                .map_err(unavailable)?;
            futures::pin_mut!(batch);
            while let Some(m) = batch.next().await {
                let m = m.map_err(unavailable)?;
                events.push(to_event(&m)?);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(BusError::Unavailable("replay timed out".into()));
            }
        }
        let name = consumer.cached_info().name.clone();
        let _ = stream.delete_consumer(&name).await;
        Ok(Replay {
            events,
            truncated: pending as usize > limit,
        })
    }

    async fn last_seq(&self) -> Result<u64, BusError> {
        let mut stream = self.stream().await?;
        Ok(stream
            .info()
            .await
            .map_err(unavailable)?
            .state
            .last_sequence)
    }
}
