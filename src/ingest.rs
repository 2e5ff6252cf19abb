//! `cascade ingest`: uploading a file (and its sidecars) to an origin and
//! following its transcode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub(crate) struct IngestArgs {
    /// The media file.
    pub(crate) file: PathBuf,
    /// Title shown in the catalog (default: the file name).
    #[arg(long)]
    pub(crate) title: Option<String>,
    /// Origin base URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8082",
        env = "CASCADE_ORIGIN_URL"
    )]
    pub(crate) origin: String,
    /// Only these countries may watch (ISO 3166-1 alpha-2), such as IN,NP.
    #[arg(long)]
    pub(crate) allow_countries: Option<String>,
    /// These countries may not watch, such as US,GB.
    #[arg(long)]
    pub(crate) deny_countries: Option<String>,
    /// Catalog synopsis.
    #[arg(long)]
    pub(crate) synopsis: Option<String>,
    /// Genres, comma-separated, such as Drama,Sport.
    #[arg(long)]
    pub(crate) genres: Option<String>,
    /// Audio languages, comma-separated, such as hi,en.
    #[arg(long)]
    pub(crate) languages: Option<String>,
    /// Release year.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1870..=2200))]
    pub(crate) year: Option<i64>,
    /// A file holding the origin's admin credential; else
    /// CASCADE_ORIGIN_ADMIN_TOKEN, else `cascade dev`'s data/control-admin-token.
    #[arg(long)]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// WebVTT subtitle files with their languages: en=a.vtt,hi=b.vtt.
    #[arg(long, value_parser = parse_lang_files)]
    pub(crate) subtitles: Option<Vec<(String, PathBuf)>>,
    /// Extra audio tracks (dubs, commentary) with their languages:
    /// fr=dub.m4a. Each source audio stream is a track already.
    #[arg(long, value_parser = parse_lang_files)]
    pub(crate) audio: Option<Vec<(String, PathBuf)>>,
    /// Video codecs beside H.264, each a full ladder: hevc, av1 or hevc,av1.
    #[arg(long)]
    pub(crate) codecs: Option<String>,
    /// Only viewers on the premium plan may watch.
    #[arg(long)]
    pub(crate) premium: bool,
    /// Ad breaks, in seconds into the title: 0 is a pre-roll, the length
    /// or more a post-roll (`0,600,1200`). Free-plan viewers see ads there.
    #[arg(long)]
    pub(crate) ad_breaks: Option<String>,
    /// Serve the title encrypted only (CENC cbcs/cenc, AES-128 for TS),
    /// played with a license from the origin's license server.
    #[arg(long)]
    pub(crate) protect: bool,
    /// Make the title in two forensically watermarked copies (A/B): each
    /// playback session's stream then carries a mark of its own, which
    /// `cascade watermark detect` reads back from a captured copy.
    #[arg(long)]
    pub(crate) watermark: bool,
}

/// The origin's admin credential for uploads.
pub(crate) fn ingest_credential(file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(f) = file {
        return std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()));
    }
    if let Ok(t) = std::env::var("CASCADE_ORIGIN_ADMIN_TOKEN") {
        return Ok(t);
    }
    std::fs::read_to_string("data/control-admin-token").context(
        "uploads need the origin's admin credential: pass --admin-token-file, set \
         CASCADE_ORIGIN_ADMIN_TOKEN, or run from the directory of `cascade dev` (data/control-admin-token)",
    )
}

/// `en=a.vtt,hi=b.vtt` as (language, file) pairs.
pub(crate) fn parse_lang_files(s: &str) -> Result<Vec<(String, PathBuf)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (lang, file) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?}: use LANGUAGE=FILE, such as en=subs.vtt"))?;
            let lang = lang.trim();
            if !cascade_packager::is_safe_lang(lang) {
                return Err(format!(
                    "{lang:?} is not a language tag such as en or pt-BR"
                ));
            }
            Ok((lang.to_string(), PathBuf::from(file.trim())))
        })
        .collect()
}

/// Sends one subtitle or audio file ahead of the media; returns its id.
pub(crate) async fn send_sidecar(
    client: &reqwest::Client,
    origin: &str,
    admin: &str,
    kind: &str,
    language: &str,
    file: &Path,
) -> anyhow::Result<String> {
    let bytes = tokio::fs::read(file)
        .await
        .with_context(|| format!("reading {}", file.display()))?;
    let resp = client
        .post(format!("{origin}/api/v1/uploads/sidecars"))
        .query(&[("kind", kind), ("language", language)])
        .bearer_auth(admin)
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("uploading {} to {origin}", file.display()))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("reading the origin's answer")?;
    if !status.is_success() {
        bail!(
            "the origin refused {} ({status}): {}",
            file.display(),
            body["message"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(body["sidecar"]
        .as_str()
        .context("the origin's answer has no sidecar id")?
        .to_string())
}

pub(crate) async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let path: &Path = &args.file;
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().await?.len();
    if size == 0 {
        bail!("{} is empty", path.display());
    }
    for list in [&args.allow_countries, &args.deny_countries]
        .into_iter()
        .flatten()
    {
        if let Err(e) = cascade_geo::CountryRule::parse_list(list) {
            bail!("country list {list:?}: {e}");
        }
    }
    let title = args.title.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "Untitled".into())
    });
    let origin = args.origin.trim_end_matches('/').to_string();
    let admin = ingest_credential(args.admin_token_file.as_deref())?;
    let client = reqwest::Client::builder().no_proxy().build()?;

    // Subtitles and extra audio first: a bad file is refused before the media goes.
    let mut sidecars = Vec::new();
    for (kind, list) in [("subtitles", &args.subtitles), ("audio", &args.audio)] {
        for (lang, file) in list.iter().flatten() {
            sidecars.push(send_sidecar(&client, &origin, admin.trim(), kind, lang, file).await?);
            println!("{kind:<9} {lang} {} sent", file.display());
        }
    }

    let sidecar_list = sidecars.join(",");
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("upload    [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let counted = {
        let bar = bar.clone();
        futures::StreamExt::inspect(tokio_util::io::ReaderStream::new(file), move |c| {
            if let Ok(c) = c {
                bar.inc(c.len() as u64);
            }
        })
    };
    let resp = client
        .post(format!("{origin}/api/v1/uploads"))
        .query(&[("title", title.as_str())])
        .query(&[
            (
                "allow_countries",
                args.allow_countries.as_deref().unwrap_or(""),
            ),
            (
                "deny_countries",
                args.deny_countries.as_deref().unwrap_or(""),
            ),
        ])
        .query(&[
            ("synopsis", args.synopsis.as_deref().unwrap_or("")),
            ("genres", args.genres.as_deref().unwrap_or("")),
            ("languages", args.languages.as_deref().unwrap_or("")),
            ("premium", if args.premium { "true" } else { "false" }),
            ("sidecars", sidecar_list.as_str()),
            ("codecs", args.codecs.as_deref().unwrap_or("")),
            ("ad_breaks", args.ad_breaks.as_deref().unwrap_or("")),
            ("protect", if args.protect { "true" } else { "false" }),
            ("watermark", if args.watermark { "true" } else { "false" }),
        ])
        .query(&args.year.map(|y| vec![("year", y)]).unwrap_or_default())
        .bearer_auth(admin.trim())
        .header("content-length", size)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(counted))
        .send()
        .await
        .with_context(|| {
            format!(
                "uploading to {origin}: the connection broke while the file was being sent \
                 (is the admin credential right, and the file within the origin's upload limit?)"
            )
        })?;
    bar.finish();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.context("reading the origin's answer")?;
    if !status.is_success() {
        bail!(
            "the origin refused the upload ({status}): {}",
            body["message"].as_str().unwrap_or("no reason given")
        );
    }
    let job = body["job"]
        .as_str()
        .context("the origin's answer has no job id")?
        .to_string();
    let asset = body["asset"]
        .as_str()
        .context("the origin's answer has no asset id")?
        .to_string();

    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template("transcode [{bar:40}] {percent}% {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    loop {
        let j: serde_json::Value = client
            .get(format!("{origin}/api/v1/jobs/{job}"))
            .bearer_auth(admin.trim())
            .send()
            .await?
            .json()
            .await?;
        let progress = j["progress"].as_f64().unwrap_or(0.0);
        bar.set_position((progress * 1000.0) as u64);
        match j["state"].as_str() {
            Some("done") => {
                bar.finish_with_message("done");
                break;
            }
            Some("failed") => {
                bar.abandon_with_message("failed");
                bail!(
                    "transcode failed: {}",
                    j["error"].as_str().unwrap_or("no reason given")
                );
            }
            Some(s) => bar.set_message(s.to_string()),
            None => bail!("the origin answered without a job state"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Signed URLs come from the playback API, which needs a viewer's login
    // (the web page does that); here, the URLs and how to sign them.
    let a: serde_json::Value = client
        .get(format!("{origin}/api/v1/assets/{asset}"))
        .bearer_auth(admin.trim())
        .send()
        .await?
        .json()
        .await?;
    let (hls, dash) = (
        a["playback"]["hls"].as_str().unwrap_or("?").to_string(),
        a["playback"]["dash"].as_str().unwrap_or("?").to_string(),
    );
    println!("{title} is playable (asset {asset}):");
    println!("  HLS  {hls}");
    println!("  DASH {dash}");
    println!("  (media needs a token: log in on the web page, or POST /api/v1/playback/{asset} with a viewer's access token)");
    Ok(())
}
