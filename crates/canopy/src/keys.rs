//! `canopy keys`: the group key material client nodes seal, open and tag records with.
//! Routers and root candidates never get this file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use canopy_kv::GroupKeys;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a group key file (tag secret and a first data key), readable only by you.
    Init {
        #[arg(long, default_value = "group.keys")]
        file: PathBuf,
        /// Overwrite an existing file (every record sealed with its keys becomes unreadable).
        #[arg(long)]
        force: bool,
    },
    /// Add a new data key and seal with it from now on; older keys stay to open old records.
    Rotate {
        #[arg(long, default_value = "group.keys")]
        file: PathBuf,
    },
    /// Show a key file's data key ids and which one seals (never the keys themselves).
    Show {
        #[arg(long, default_value = "group.keys")]
        file: PathBuf,
    },
}

pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Init { file, force } => {
            if file.exists() && !force {
                bail!(
                    "{} exists; rotate it with `canopy keys rotate`, or pass --force to replace it \
                     (records sealed with its keys could no longer be opened)",
                    file.display()
                );
            }
            let keys = GroupKeys::generate()?;
            keys.save(&file)?;
            println!(
                "created {} (data key {}); copy it to every client node, never to routers",
                file.display(),
                keys.current_key_id()
            );
        }
        KeysCommand::Rotate { file } => {
            let mut keys = GroupKeys::load(&file)?;
            let id = keys.rotate()?;
            keys.save(&file)?;
            println!(
                "{}: data key {id} added and sealing; distribute it to every client node",
                file.display()
            );
        }
        KeysCommand::Show { file } => {
            let keys = GroupKeys::load(&file)?;
            let ids: Vec<String> = keys.key_ids().iter().map(|id| id.to_string()).collect();
            println!(
                "{}: data keys {}; sealing with {}",
                file.display(),
                ids.join(", "),
                keys.current_key_id()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
