//! `axle masterdata check | replay`: ask the running master data service to check its golden
//! records against the vehicle service, or to rebuild them from its event log.

use std::path::PathBuf;

use anyhow::{Context, bail};
use axle_core::config::Config;

#[derive(Debug, clap::Subcommand)]
pub enum MasterdataCommand {
    /// Compare golden records with the vehicle service; exits 1 when they drift.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Rebuild every golden record from the event log.
    Replay {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

pub fn run(command: MasterdataCommand) -> anyhow::Result<()> {
    let (path, config) = match &command {
        MasterdataCommand::Check { config } => ("/consistency-check", config),
        MasterdataCommand::Replay { config } => ("/replay", config),
    };
    let config = Config::load(config.as_deref()).context("configuration")?;
    let url = format!("http://{}{path}", config.services.masterdata.listen);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report: serde_json::Value = runtime.block_on(async {
        let token = crate::token::access_token(&config).await?;
        let response = reqwest::Client::new()
            .post(&url)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("master data at {url}"))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("answer from {url}"))?;
        if !status.is_success() {
            bail!(
                "{url}: {status}: {}",
                body["message"].as_str().unwrap_or_default()
            );
        }
        Ok(body)
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    if report["in_sync"] == false {
        bail!(
            "{} of {} vehicles drift",
            report["drifting"],
            report["checked"]
        );
    }
    Ok(())
}
