//! A body received once and read by many as it arrives: the leader of a
//! coalesced fetch appends chunks, and every waiter (the leader's own viewer
//! included) reads from the start at its own pace, without waiting for the
//! end. Chunks are shared (`Bytes`), never copied per reader.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

#[derive(Default)]
struct State {
    chunks: Vec<Bytes>,
    len: usize,
    /// `Some(Ok)` when complete, `Some(Err)` when the upstream failed.
    end: Option<Result<(), String>>,
}

/// The reading side; cheap to clone.
#[derive(Clone)]
pub struct SharedBody {
    state: Arc<Mutex<State>>,
    changed: watch::Receiver<usize>,
    /// The length announced by the upstream, if any.
    expected: Option<u64>,
}

impl std::fmt::Debug for SharedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBody")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

/// The writing side. Dropped without [`BodyWriter::finish`], the body ends
/// in an error, so readers never wait forever.
pub struct BodyWriter {
    state: Arc<Mutex<State>>,
    changed: watch::Sender<usize>,
    done: bool,
}

/// A shared body and its writer; `expected` is the announced length.
pub fn shared_body(expected: Option<u64>) -> (SharedBody, BodyWriter) {
    let state = Arc::new(Mutex::new(State::default()));
    let (tx, rx) = watch::channel(0);
    (
        SharedBody {
            state: state.clone(),
            changed: rx,
            expected,
        },
        BodyWriter {
            state,
            changed: tx,
            done: false,
        },
    )
}

impl BodyWriter {
    /// Appends a chunk and wakes the readers.
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let n = match self.state.lock() {
            Ok(mut s) => {
                s.len += chunk.len();
                s.chunks.push(chunk);
                s.chunks.len()
            }
            Err(_) => return,
        };
        self.changed.send_replace(n);
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.state.lock().map(|s| s.len).unwrap_or(0)
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends the body successfully.
    pub fn finish(mut self) {
        self.end(Ok(()));
    }

    /// Ends the body with an error: readers stop with it.
    pub fn fail(mut self, why: &str) {
        self.end(Err(why.to_string()));
    }

    fn end(&mut self, how: Result<(), String>) {
        self.done = true;
        let n = match self.state.lock() {
            Ok(mut s) => {
                s.end = Some(how);
                s.chunks.len()
            }
            Err(_) => 0,
        };
        // Readers wake on any send, even of the same count.
        self.changed.send_modify(|v| *v = n);
    }
}

impl Drop for BodyWriter {
    fn drop(&mut self) {
        if !self.done {
            self.end(Err("the upstream fetch was abandoned".into()));
        }
    }
}

/// One reader's position in a shared body.
pub struct BodyReader {
    body: SharedBody,
    next: usize,
}

impl SharedBody {
    /// The length the upstream announced, if any.
    pub fn expected_len(&self) -> Option<u64> {
        self.expected
    }

    /// A reader from the first byte.
    pub fn reader(&self) -> BodyReader {
        BodyReader {
            body: self.clone(),
            next: 0,
        }
    }

    /// Waits until the body has ended, well or not.
    pub async fn finished(&self) {
        let mut changed = self.changed.clone();
        loop {
            {
                match self.state.lock() {
                    Ok(s) if s.end.is_none() => changed.mark_unchanged(),
                    _ => return,
                }
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// The bytes received so far, in one piece.
    pub fn snapshot(&self) -> Bytes {
        let Ok(s) = self.state.lock() else {
            return Bytes::new();
        };
        if s.chunks.len() == 1 {
            return s.chunks[0].clone();
        }
        let mut out = BytesMut::with_capacity(s.len);
        for c in &s.chunks {
            out.extend_from_slice(c);
        }
        out.freeze()
    }

    /// Waits for the whole body.
    pub async fn collect(&self) -> Result<Bytes, String> {
        let mut r = self.reader();
        let mut out = BytesMut::new();
        let mut single = None;
        let mut count = 0;
        while let Some(chunk) = r.next().await {
            let chunk = chunk?;
            count += 1;
            if count == 1 {
                single = Some(chunk.clone());
            }
            out.extend_from_slice(&chunk);
        }
        // One chunk: hand it back without the copy.
        match (count, single) {
            (1, Some(c)) => Ok(c),
            _ => Ok(out.freeze()),
        }
    }
}

impl BodyReader {
    /// The next chunk: `None` at the end, `Some(Err)` when the upstream failed.
    pub async fn next(&mut self) -> Option<Result<Bytes, String>> {
        let mut changed = self.body.changed.clone();
        loop {
            {
                let Ok(s) = self.body.state.lock() else {
                    return Some(Err("body state poisoned".into()));
                };
                if let Some(c) = s.chunks.get(self.next) {
                    self.next += 1;
                    return Some(Ok(c.clone()));
                }
                match &s.end {
                    Some(Ok(())) => return None,
                    Some(Err(e)) => return Some(Err(e.clone())),
                    None => {}
                }
                changed.mark_unchanged();
            }
            if changed.changed().await.is_err() {
                // The writer is gone: look once more, then give up.
                let Ok(s) = self.body.state.lock() else {
                    return Some(Err("body state poisoned".into()));
                };
                if let Some(c) = s.chunks.get(self.next) {
                    self.next += 1;
                    return Some(Ok(c.clone()));
                }
                return match &s.end {
                    Some(Ok(())) => None,
                    Some(Err(e)) => Some(Err(e.clone())),
                    None => Some(Err("the upstream fetch was abandoned".into())),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_get_chunks_as_they_arrive_and_the_whole() {
        let (body, mut w) = shared_body(Some(6));
        let mut early = body.reader();
        w.push(Bytes::from_static(b"abc"));
        // The first chunk is readable before the body ends.
        assert_eq!(early.next().await.unwrap().unwrap(), &b"abc"[..]);
        let late = body.clone();
        let whole = tokio::spawn(async move { late.collect().await });
        w.push(Bytes::from_static(b"def"));
        w.finish();
        assert_eq!(early.next().await.unwrap().unwrap(), &b"def"[..]);
        assert!(early.next().await.is_none());
        assert_eq!(whole.await.unwrap().unwrap(), &b"abcdef"[..]);
    }

    #[tokio::test]
    async fn an_abandoned_writer_ends_readers_with_an_error() {
        let (body, mut w) = shared_body(None);
        w.push(Bytes::from_static(b"x"));
        drop(w);
        assert!(body.collect().await.is_err());
    }
}
