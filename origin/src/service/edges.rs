//! The first edge of a playback session: control ranks the fleet for the
//! viewer's country (region, health, drain, load: the same ranking its
//! steering server uses), and the answer is kept a couple of seconds per
//! country so a rush of viewers costs control one call per country. With
//! no control configured, or when control does not answer, the configured
//! `public_edge_url`.

use std::time::Duration;

/// How long control's choice for a country is reused.
const CHOICE_TTL: Duration = Duration::from_secs(2);

/// Asks control which edge new sessions should start on.
pub(crate) struct EdgeChooser {
    control: Option<(String, String, reqwest::Client)>,
    fallback: String,
    chosen: moka::future::Cache<String, String>,
}

impl EdgeChooser {
    pub(crate) fn new(control_url: &str, fleet_token: &str, public_edge_url: &str) -> EdgeChooser {
        let control = (!control_url.is_empty())
            .then(|| cascade_common::fleet_client("edge choice"))
            .flatten()
            .map(|c| {
                (
                    control_url.trim_end_matches('/').to_string(),
                    fleet_token.to_string(),
                    c,
                )
            });
        EdgeChooser {
            control,
            fallback: public_edge_url.trim_end_matches('/').to_string(),
            chosen: moka::future::Cache::builder()
                .max_capacity(1024)
                .time_to_live(CHOICE_TTL)
                .build(),
        }
    }

    /// The base URL of the edge for a viewer in `country` (if known).
    pub(crate) async fn first(&self, country: Option<&str>) -> String {
        let Some((url, token, client)) = &self.control else {
            return self.fallback.clone();
        };
        let country = country.unwrap_or("").to_ascii_uppercase();
        let fallback = self.fallback.clone();
        self.chosen
            .get_with(country.clone(), async move {
                #[derive(serde::Deserialize)]
                struct Choice {
                    url: String,
                }
                let asked = client
                    .get(format!("{url}/api/v1/fleet/edge"))
                    .query(&[("country", &country)])
                    .bearer_auth(token)
                    .send()
                    .await;
                match asked {
                    Ok(r) if r.status().is_success() => match r.json::<Choice>().await {
                        Ok(c) if c.url.starts_with("http") => c.url.trim_end_matches('/').to_string(),
                        _ => fallback,
                    },
                    Ok(r) => {
                        tracing::warn!(status = r.status().as_u16(), "control chose no edge; using public_edge_url");
                        fallback
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.without_url(), "control unreachable; using public_edge_url");
                        fallback
                    }
                }
            })
            .await
    }
}
