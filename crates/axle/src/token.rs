//! `axle token`: an access token for the command line, from Axle's identity service — the
//! `axle-cli` client's credentials, kept in the data directory on first start — so an
//! operator on the machine can call the APIs: `curl -H "Authorization: Bearer $(axle token)"`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use axle_core::config::Config;

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where Axle keeps its data (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref()).context("configuration")?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!("{}", runtime.block_on(access_token(&config))?);
    Ok(())
}

/// A token of the `axle-cli` client, from the identity service `config` names.
pub async fn access_token(config: &Config) -> anyhow::Result<String> {
    let path = axle_identity::cli_secret_path(&config.data_dir);
    let secret = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} (is this the data directory of an Axle that has run?)",
            path.display()
        )
    })?;
    let url = format!("{}/token", config.issuer());
    let answer: serde_json::Value = {
        let response = reqwest::Client::new()
            .post(&url)
            .basic_auth(axle_identity::CLI_CLIENT, Some(secret.trim()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .with_context(|| format!("identity at {url}"))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("answer from {url}"))?;
        if !status.is_success() {
            bail!(
                "{url}: {status}: {}",
                body["error_description"].as_str().unwrap_or_default()
            );
        }
        body
    };
    match answer["access_token"].as_str() {
        Some(token) => Ok(token.to_string()),
        None => bail!("{url}: no access token in the answer"),
    }
}

/// POSTs to `url` as the command line's client; answers the JSON body of a 2xx, else fails
/// with the API's message. The one way the commands call a running Axle.
pub fn post_as_cli(config: &Config, url: &str) -> anyhow::Result<serde_json::Value> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let token = access_token(config).await?;
        let response = reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("Axle at {url}"))?;
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
    })
}

/// `axle identity rotate-keys`: a new signing key for Axle's identity service now (the old one
/// stays published until the tokens it signed expire).
pub fn rotate_keys(args: TokenArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref()).context("configuration")?;
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    let answer = post_as_cli(&config, &format!("{}/keys/rotate", config.issuer()))?;
    println!(
        "the identity service signs with the key {} now",
        answer["kid"].as_str().unwrap_or_default()
    );
    Ok(())
}
