//! Mail the origin sends (sign-up links, notices), behind [`Mailer`].
//!
//! Every message is first written to the outbox, a directory of RFC 5322
//! `.eml` files only the owner reads, each written whole under a temporary
//! name and then renamed, so a reader (a mail relay, a person, a test)
//! never sees half a message. With an SMTP relay configured, each message
//! is also handed to it in the background, and its file removed once the
//! relay took it; one the relay refused stays in the outbox.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lettre::message::header::{ContentTransferEncoding, ContentType, MIME_VERSION_1_0};
use lettre::message::{Body, Mailbox};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::storage::{clock, ids, Error, Result};

/// Where the origin's mail goes.
#[async_trait::async_trait]
pub(crate) trait Mailer: Send + Sync {
    /// Sends a message, or stores it where it will be sent from; answers
    /// once it is safely stored.
    async fn send(&self, message: Message) -> Result<()>;
}

/// A mail ready to build: one recipient, a subject, plain text.
pub(crate) struct Mail<'a> {
    pub(crate) from: &'a Mailbox,
    pub(crate) to: &'a Address,
    pub(crate) subject: &'a str,
    pub(crate) text: String,
}

impl Mail<'_> {
    /// The RFC 5322 message: plain text, 7-bit when it can be, so that a
    /// link in it reads the same in the raw file.
    pub(crate) fn build(self) -> Result<Message> {
        let body = seven_bit(&self.text).unwrap_or_else(|| Body::new(self.text));
        Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, self.to.clone()))
            .subject(self.subject)
            .message_id(Some(format!(
                "<{}@{}>",
                ids::new_id(),
                self.from.email.domain()
            )))
            // Lettre adds it for multipart bodies only; RFC 2045 wants it
            // wherever Content-Type is.
            .header(MIME_VERSION_1_0)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| Error::internal("mail", "could not send mail", e))
    }
}

/// The mailer a config asks for: the outbox, and the SMTP relay if any.
pub(crate) fn from_config(outbox: &Path, smtp_url: &str) -> anyhow::Result<Box<dyn Mailer>> {
    let outbox = Outbox::open(outbox)?;
    if smtp_url.is_empty() {
        return Ok(Box::new(outbox));
    }
    // The URL may hold a password: errors never repeat it.
    let smtp = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
        .map_err(|_| anyhow::anyhow!("smtp_url: not a valid smtp:// or smtps:// URL"))?
        .build();
    Ok(Box::new(Relay {
        outbox,
        smtp: Arc::new(smtp),
    }))
}

/// Messages as `.eml` files in a directory (mode 0700, files 0600).
pub(crate) struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// Opens the outbox, making the directory owner-only (and creating it).
    pub(crate) fn open(dir: &Path) -> std::io::Result<Outbox> {
        cascade_common::private_dir(dir)?;
        Ok(Outbox {
            dir: dir.to_path_buf(),
        })
    }

    /// Writes a message as a new file; answers its path.
    async fn write(&self, message: &Message) -> Result<PathBuf> {
        let bytes = message.formatted();
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_atomically(&dir, &bytes))
            .await
            .map_err(|e| Error::internal("mail", "could not send mail", e))?
            .map_err(|e| Error::internal("mail", "could not send mail", e))
    }
}

#[async_trait::async_trait]
impl Mailer for Outbox {
    async fn send(&self, message: Message) -> Result<()> {
        self.write(&message).await.map(|_| ())
    }
}

/// The outbox, emptied by an SMTP relay.
struct Relay {
    outbox: Outbox,
    smtp: Arc<AsyncSmtpTransport<Tokio1Executor>>,
}

#[async_trait::async_trait]
impl Mailer for Relay {
    async fn send(&self, message: Message) -> Result<()> {
        let path = self.outbox.write(&message).await?;
        // In the background: the answer must not wait on (or tell about)
        // the relay.
        let smtp = self.smtp.clone();
        tokio::spawn(async move {
            match smtp.send(message).await {
                Ok(_) => {
                    if let Err(e) = tokio::fs::remove_file(&path).await {
                        tracing::warn!(file = %path.display(), error = %e, "relayed mail left in the outbox");
                    }
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "the SMTP relay refused a mail; it stays in the outbox");
                }
            }
        });
        Ok(())
    }
}

/// Text as a 7-bit body when it is one: ASCII, no NUL or CR, lines of at
/// most 998 octets (RFC 5322 and 2045). Lettre's own choice would
/// quote-print any line of 76 or more, and a long link with it.
fn seven_bit(text: &str) -> Option<Body> {
    let fits = text.is_ascii()
        && !text.contains(['\0', '\r'])
        && text.split('\n').all(|line| line.len() <= 998);
    fits.then(|| {
        Body::dangerous_pre_encoded(
            text.replace('\n', "\r\n").into_bytes(),
            ContentTransferEncoding::SevenBit,
        )
    })
}

/// Writes `bytes` to a new owner-only file of `dir`: a temporary name
/// first (a dot file, which readers of `*.eml` skip), synced, then renamed
/// to `{unix time}-{id}.eml`, so names sort by time.
fn write_atomically(dir: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let id = ids::new_id();
    let tmp = dir.join(format!(".{id}.tmp"));
    let t = clock::now_precise();
    let path = dir.join(format!("{}.{:09}-{id}.eml", t.as_secs(), t.subsec_nanos()));
    let mut opts = std::fs::OpenOptions::new();
    // A fresh name: never someone else's file, never a link followed.
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> Message {
        let from: Mailbox = "Cascade <no-reply@cascade.invalid>".parse().unwrap();
        let to: Address = "viewer@example.com".parse().unwrap();
        Mail {
            from: &from,
            to: &to,
            subject: "Hello",
            text: text.into(),
        }
        .build()
        .unwrap()
    }

    #[test]
    fn messages_are_plain_7bit_rfc5322() {
        let link = format!("http://127.0.0.1:8080/#verify={}", "A-b_9".repeat(20));
        let raw = String::from_utf8(message(&format!("Open\n\n  {link}\n")).formatted()).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        for h in [
            "From: Cascade <no-reply@cascade.invalid>",
            "To: viewer@example.com",
            "Subject: Hello",
            "Date: ",
            "Message-ID: <",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 7bit",
        ] {
            assert!(head.contains(h), "{h} in {head}");
        }
        assert!(body.contains(&link), "{body}");
        // Text that 7-bit cannot carry is still sent, encoded.
        let raw = String::from_utf8(message("Grüße").formatted()).unwrap();
        assert!(!raw.contains("7bit") && !raw.contains("Grüße"), "{raw}");
    }

    #[tokio::test]
    async fn the_outbox_holds_whole_owner_only_files() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mail");
        let outbox = Outbox::open(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let m = message("one");
        let a = outbox.write(&m).await.unwrap();
        let b = outbox.write(&message("two")).await.unwrap();
        assert!(a < b, "names sort by time: {a:?} {b:?}");
        assert_eq!(mode(&a), 0o600);
        assert_eq!(std::fs::read(&a).unwrap(), m.formatted());
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        assert!(names.iter().all(|n| n.ends_with(".eml")), "{names:?}");
    }

    #[tokio::test]
    async fn a_relay_takes_each_mail_and_empties_the_outbox() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Just enough of an SMTP server to take one message.
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
            let mut data = String::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                let reply: &[u8] = match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                    "EHLO" | "HELO" | "MAIL" | "RCPT" => b"250 OK\r\n",
                    "DATA" => {
                        w.write_all(b"354 go on\r\n").await.unwrap();
                        while let Some(l) = lines.next_line().await.unwrap() {
                            if l == "." {
                                break;
                            }
                            data.push_str(&l);
                            data.push('\n');
                        }
                        b"250 queued\r\n"
                    }
                    "QUIT" => {
                        w.write_all(b"221 bye\r\n").await.unwrap();
                        break;
                    }
                    _ => b"502 no\r\n",
                };
                w.write_all(reply).await.unwrap();
            }
            data
        });
        let tmp = tempfile::tempdir().unwrap();
        let mailer = from_config(tmp.path(), &format!("smtp://127.0.0.1:{port}")).unwrap();
        mailer.send(message("relayed text")).await.unwrap();
        let data = tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
        assert!(
            data.contains("To: viewer@example.com") && data.contains("relayed text"),
            "{data}"
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_dir(tmp.path()).unwrap().next().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the relayed mail left its file"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
