//! `arbor token create|list|revoke`: the tokens file on a node's machine. Running nodes
//! notice a change themselves.

use arbor_node::auth::{TokenFile, TokenInfo};

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
                print!("{}", to_table(&list.list()));
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

/// Formats tokens for `arbor token list`: one line each under a header.
fn to_table(tokens: &[TokenInfo]) -> String {
    let mut out = format!("{:<8}  {:<6}  {:<20}  LABEL\n", "ID", "ROLE", "CREATED");
    for t in tokens {
        let line = format!(
            "{:<8}  {:<6}  {:<20}  {}",
            t.id,
            t.role,
            t.created,
            t.label.as_deref().unwrap_or("")
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbor_node::auth::Role;

    #[test]
    fn the_table_lists_ids_roles_and_labels() {
        let t = to_table(&[TokenInfo {
            id: "0123abcd".into(),
            role: Role::Reader,
            created: "2026-01-01T00:00:00Z".into(),
            label: Some("grafana".into()),
        }]);
        let lines: Vec<_> = t.lines().collect();
        assert!(lines[0].starts_with("ID"), "{t}");
        assert!(
            lines[1].contains("0123abcd") && lines[1].contains("reader"),
            "{t}"
        );
        assert!(lines[1].ends_with("grafana"), "{t}");
        assert_eq!(lines[0].find("LABEL"), lines[1].find("grafana"), "{t}");
    }
}
