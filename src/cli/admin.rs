//! The offline commands: `user add|remove|list`, `key public`, `token revoke`. They open the
//! database directly, so the server must not be running on the same data dir (redb admits one
//! process; the error says so).
use anyhow::{bail, Context};
use std::io::BufRead;

use super::{KeyCommand, TokenCommand, UserCommand};
use crate::auth::{self, public_key_string};
use crate::config::Settings;
use crate::localdb::LocalDb;

fn open_store(settings: &Settings) -> anyhow::Result<LocalDb> {
    LocalDb::open(&settings.data_dir).with_context(|| {
        format!(
            "opening {} (if a server is running on this data dir, stop it first: the database admits one process at a time)",
            settings.data_dir.display()
        )
    })
}

pub fn user(settings: &Settings, command: UserCommand) -> anyhow::Result<()> {
    let store = open_store(settings)?;
    let db = store.database();
    match command {
        UserCommand::Add {
            name,
            password_stdin,
            role,
        } => {
            let password = if password_stdin {
                read_stdin_line()?
            } else {
                prompt_password()?
            };
            auth::add_user(db, &name, &password, role)?;
            match role {
                Some(role) => eprintln!("user {name} added with the {role} role"),
                None => eprintln!("user {name} added"),
            }
        }
        UserCommand::Remove { name } => {
            auth::remove_user(db, &name)?;
            eprintln!("user {name} removed; their tokens no longer work");
        }
        UserCommand::List => {
            // Names hold no control characters (`add` refuses them), so a tab separates.
            for (name, role) in auth::list_users(db)? {
                match role {
                    Some(role) => println!("{name}\t{role}"),
                    None => println!("{name}"),
                }
            }
        }
    }
    Ok(())
}

pub fn key(settings: &Settings, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Public => println!("{}", public_key_string(&settings.load_root_key()?)),
    }
    Ok(())
}

pub fn token(settings: &Settings, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Revoke { token } => {
            let public = settings.load_root_key()?.public();
            let store = open_store(settings)?;
            auth::revoke_token(store.database(), token.trim(), &public)?;
            eprintln!("token revoked");
        }
    }
    Ok(())
}

/// The first line of stdin, without its line ending (`echo -n pass |` and `echo pass |` agree).
fn read_stdin_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

fn prompt_password() -> anyhow::Result<String> {
    let password = rpassword::prompt_password("Password: ").context("reading the password")?;
    let again = rpassword::prompt_password("Again: ").context("reading the password")?;
    if password != again {
        bail!("the passwords differ");
    }
    Ok(password)
}
