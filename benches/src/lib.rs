//! Benchmarks live in `benches/`; see `benches/README.md`. This library
//! holds what the load programs share.

use std::path::Path;

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// An H.264/AAC clip made with the FFmpeg CLI from a lavfi video source
/// (such as `testsrc2=s=640x360:r=25`) and a 440 Hz tone.
pub fn ffmpeg_clip(out: &Path, source: &str, secs: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("{source}:d={secs}"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!("sine=f=440:sample_rate=48000:d={secs}"))
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-shortest"])
        .arg(out)
        .status()
        .context("running ffmpeg (make deps installs it)")?;
    if !status.success() {
        bail!("ffmpeg failed making {}", out.display());
    }
    Ok(())
}

/// Sends a request and answers its JSON, or fails with the status.
pub async fn json(r: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let r = r.send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{status}: {v}");
    }
    Ok(v)
}

/// Signs up a viewer through the mailed link; answers an access token.
pub async fn viewer(
    http: &reqwest::Client,
    origin: &str,
    outbox: &Path,
    n: usize,
) -> anyhow::Result<String> {
    let email = format!("bench-{n}-{}@example.test", std::process::id());
    json(
        http.post(format!("{origin}/api/v1/auth/signup"))
            .json(&json!({ "email": email, "password": "correct horse 42" })),
    )
    .await?;
    let mut code = None;
    for entry in std::fs::read_dir(outbox)? {
        let text = std::fs::read_to_string(entry?.path())?;
        if text.contains(&format!("To: {email}")) {
            if let Some(at) = text.find("#verify=") {
                code = Some(
                    text[at + 8..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                        .collect::<String>(),
                );
            }
        }
    }
    let code = code.context("no sign-up mail")?;
    let v = json(
        http.post(format!("{origin}/api/v1/auth/verify"))
            .json(&json!({ "code": code })),
    )
    .await?;
    Ok(v["access_token"]
        .as_str()
        .context("access token")?
        .to_string())
}
