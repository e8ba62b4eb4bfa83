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
    let report = crate::token::post_as_cli(&config, &url)?;
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
