//! `arbor token create|list|revoke`: the tokens file on a node's machine. Running nodes
//! notice a change themselves.

use arbor_node::gateway::tokens::{self, TokenFile};

use crate::flags::TokenCommand;

/// The token commands only touch the tokens file; running nodes notice the change themselves.
pub fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create { role, label, file } => {
            let path = file.path()?;
            let (info, token) = TokenFile::create(&path, role, label.as_deref())?;
            // The token alone on stdout, so scripts can capture it; the rest on stderr.
            println!("{token}");
            eprintln!(
                "created token {} with role {role}{} in {}; this is the only time the token is \
                 shown (the file keeps only its digest): store it now",
                info.id,
                info.label
                    .as_deref()
                    .map_or_else(String::new, |l| format!(" ({l})")),
                path.display()
            );
        }
        TokenCommand::List { json, file } => {
            let path = file.path()?;
            let list = TokenFile::load(&path)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "file": path, "tokens": list.list() })
                );
            } else if list.is_empty() {
                println!(
                    "{} {}; create one with `arbor token create --role admin`",
                    if list.exists() {
                        "no tokens in"
                    } else {
                        "no tokens file at"
                    },
                    path.display()
                );
            } else {
                print!("{}", tokens::to_table(&list.list()));
            }
        }
        TokenCommand::Revoke { id, file } => {
            let path = file.path()?;
            let info = TokenFile::revoke(&path, &id)?;
            println!(
                "token {} ({}) revoked in {}; running nodes refuse it once they see the change",
                info.id,
                info.role,
                path.display()
            );
        }
    }
    Ok(())
}
