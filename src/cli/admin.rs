//! The admin commands: `user add|remove|list`, `key public`, `token revoke`, on the store the
//! servers use. With `--redis-url` that is Redis, and the commands work while the servers run
//! (every replica sees the change on its next request). Otherwise they open the database file
//! directly, so no server may be running on the same data dir (redb admits one process; the
//! error says so).
use anyhow::{bail, Context};
use std::io::BufRead;

use super::{KeyCommand, TokenCommand, UserCommand};
use crate::auth::{public_key_string, AuthStore};
use crate::config::Settings;
use crate::localdb::LocalDb;
use crate::startup::{connect_redis, redis_auth_store};

async fn open_store(settings: &Settings) -> anyhow::Result<AuthStore> {
    if let Some(conn) = connect_redis(settings).await? {
        return Ok(redis_auth_store(settings, &conn));
    }
    let db = LocalDb::open(&settings.data_dir).with_context(|| {
        format!(
            "opening {} (if a server is running on this data dir, stop it first: the database admits one process at a time)",
            settings.data_dir.display()
        )
    })?;
    Ok(AuthStore::Redb(db))
}

pub async fn user(settings: &Settings, command: UserCommand) -> anyhow::Result<()> {
    let store = open_store(settings).await?;
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
            store.add_user(&name, &password, role).await?;
            match role {
                Some(role) => eprintln!("user {name} added with the {role} role"),
                None => eprintln!("user {name} added"),
            }
        }
        UserCommand::Remove { name } => {
            store.remove_user(&name).await?;
            eprintln!("user {name} removed; their tokens no longer work");
        }
        UserCommand::List => {
            // Names hold no control characters (`add` refuses them), so a tab separates.
            for (name, role) in store.list_users().await? {
                match role {
                    Some(role) => println!("{name}\t{role}"),
                    None => println!("{name}"),
                }
            }
        }
    }
    Ok(())
}

pub async fn key(settings: &Settings, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Public => {
            let root = root_key(settings).await?;
            println!("{}", public_key_string(&root));
        }
    }
    Ok(())
}

pub async fn token(settings: &Settings, command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Revoke { token } => {
            let store = open_store(settings).await?;
            let public = settings.root_key(&store).await?.public();
            store.revoke_token(token.trim(), &public).await?;
            eprintln!("token revoked");
        }
    }
    Ok(())
}

/// The root key, without opening the database when it is given or kept in a file (so `key
/// public` works while a server holds the database).
async fn root_key(settings: &Settings) -> anyhow::Result<biscuit_auth::KeyPair> {
    if let Some(key) = settings.given_root_key()? {
        return Ok(key);
    }
    match connect_redis(settings).await? {
        Some(conn) => settings.root_key(&redis_auth_store(settings, &conn)).await,
        None => Ok(crate::auth::load_or_create_root_key(
            &settings.data_dir,
            None,
            None,
        )?),
    }
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
