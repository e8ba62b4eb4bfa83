//! `axle`: one binary runs the whole platform.
//!
//! `main` parses the command line and calls one function per command; the wiring of services
//! lives in [`serve`].

mod demo;
mod masterdata;
mod serve;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "axle",
    version,
    about = "Axle: the automotive digital commerce platform in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform (every service, or those named with --only).
    Serve(serve::ServeArgs),
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Operate master data (the service must be running).
    Masterdata {
        #[command(subcommand)]
        command: masterdata::MasterdataCommand,
    },
    /// Operate Axle's identity service (it must be running).
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Print an access token for the command line (`curl -H "Authorization: Bearer $(axle token)"`).
    Token(token::TokenArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Sign with a new key from now on (tokens signed with the old one stay valid).
    RotateKeys(token::TokenArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a TOML configuration file; exits non-zero naming the bad key.
    Check { file: PathBuf },
}

/// mimalloc: the proxy's many small, short-lived allocations (headers, buffers, futures) cost
/// a third of what they cost with the system allocator (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Masterdata { command } => masterdata::run(command),
        Command::Token(args) => token::run(args),
        Command::Identity {
            command: IdentityCommand::RotateKeys(args),
        } => token::rotate_keys(args),
        Command::Version => {
            println!("axle {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("axle: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_check(file: &std::path::Path) -> anyhow::Result<()> {
    axle_core::config::Config::load_file(file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    println!("{}: ok", file.display());
    Ok(())
}
