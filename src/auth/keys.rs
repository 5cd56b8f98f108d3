//! The ed25519 root key that signs every token.
//!
//! Accepted private-key text (environment or file; surrounding whitespace ignored):
//! - biscuit's prefixed form `ed25519-private/<64 hex chars>` (what we write), or
//! - bare `<64 hex chars>` (the 32-byte ed25519 secret).
//!
//! The public key is rendered in biscuit's `ed25519/<64 hex chars>` form, the same text
//! `biscuit_auth::PublicKey::from_str` and the biscuit CLI accept.
//!
//! No error message or log line here includes key text: parse failures say what was expected,
//! never what was found.
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use biscuit_auth::{Algorithm, KeyPair, PrivateKey};

use super::AuthError;

/// Name of the generated key file inside the data directory.
pub const ROOT_KEY_FILE: &str = "root_key";
const PREFIX: &str = "ed25519-private/";

/// Root key by priority: `key_env` (the *value* of the environment variable, read by the
/// caller) > `key_file` > `data_dir/root_key`, the last generated on first use (mode 0600,
/// written atomically) and read back afterwards.
pub fn load_or_create_root_key(
    data_dir: &Path,
    key_file: Option<&Path>,
    key_env: Option<&str>,
) -> Result<KeyPair, AuthError> {
    if let Some(text) = key_env {
        return parse_private_key(text)
            .map_err(|e| AuthError::Key(format!("root key from the environment: {e}")));
    }
    if let Some(path) = key_file {
        return read_key_file(path);
    }
    let path = data_dir.join(ROOT_KEY_FILE);
    match read_key_file(&path) {
        Ok(key) => Ok(key),
        Err(_) if !path.exists() => create_key_file(data_dir, &path),
        Err(e) => Err(e),
    }
}

/// Parses the private-key forms described in the module docs.
pub fn parse_private_key(text: &str) -> Result<KeyPair, AuthError> {
    const EXPECTED: &str = "expected `ed25519-private/<64 hex chars>` or 64 hex chars";
    let text = text.trim();
    let hex = text.strip_prefix(PREFIX).unwrap_or(text);
    // Checked here so biscuit's hex error (which quotes the offending character) never reaches
    // an error message.
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AuthError::Key(format!(
            "not a valid ed25519 private key ({EXPECTED})"
        )));
    }
    let private = PrivateKey::from_bytes_hex(hex, Algorithm::Ed25519)
        .map_err(|_| AuthError::Key(format!("not a valid ed25519 private key ({EXPECTED})")))?;
    Ok(KeyPair::from(&private))
}

/// `ed25519/<hex>`: for `classifier-api key public` and for anyone verifying our tokens.
pub fn public_key_string(root: &KeyPair) -> String {
    root.public().to_string()
}

fn read_key_file(path: &Path) -> Result<KeyPair, AuthError> {
    let text = fs::read_to_string(path)
        .map_err(|e| AuthError::Key(format!("cannot read {}: {e}", path.display())))?;
    warn_if_readable_by_others(path);
    parse_private_key(&text).map_err(|e| AuthError::Key(format!("{}: {e}", path.display())))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "root key file is accessible by group/others; chmod 600 it");
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// Generates a key and publishes it at `path` without ever exposing a partial file: write a
/// private temp file, fsync, then hard-link it into place. The link fails if `path` already
/// exists, so when two processes race, both end up using the first one's key.
fn create_key_file(data_dir: &Path, path: &Path) -> Result<KeyPair, AuthError> {
    let io_err = |what: &str, e: io::Error| AuthError::Key(format!("{what}: {e}"));
    fs::create_dir_all(data_dir)
        .map_err(|e| io_err(&format!("cannot create {}", data_dir.display()), e))?;

    let key = KeyPair::new();
    let tmp = data_dir.join(format!(
        ".{ROOT_KEY_FILE}.tmp-{}-{}",
        std::process::id(),
        crate::clock::unix_millis(std::time::SystemTime::now())
    ));
    let written = write_private_file(&tmp, &key);
    let published = written.and_then(|()| fs::hard_link(&tmp, path));
    // The temp name is only a staging area; best effort, a leftover holds no key we use.
    let _ = fs::remove_file(&tmp);
    match published {
        Ok(()) => {
            sync_dir(data_dir);
            tracing::info!(path = %path.display(), "generated a new root key");
            Ok(key)
        }
        // Another process created it between our existence check and the link: use theirs.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_key_file(path),
        Err(e) => Err(io_err(&format!("cannot write {}", path.display()), e)),
    }
}

fn write_private_file(path: &Path, key: &KeyPair) -> io::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        // Set at creation so the file is never briefly world-readable.
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(path)?;
    let text = format!("{}\n", key.private().to_prefixed_string());
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Makes the new directory entry durable (best effort; not all platforms support it).
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

    #[test]
    fn generated_key_persists_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data"); // does not exist yet
        let k1 = load_or_create_root_key(&data, None, None).expect("create");
        let k2 = load_or_create_root_key(&data, None, None).expect("reload");
        assert_eq!(public_key_string(&k1), public_key_string(&k2));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(data.join(ROOT_KEY_FILE))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No staging files left behind.
        let names: Vec<_> = fs::read_dir(&data)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [ROOT_KEY_FILE]);
    }

    #[test]
    fn key_from_file_and_env_in_priority_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file_key = KeyPair::new();
        let key_path = dir.path().join("my.key");
        fs::write(
            &key_path,
            format!("  {}\n", file_key.private().to_prefixed_string()),
        )
        .expect("write");

        let from_file = load_or_create_root_key(dir.path(), Some(&key_path), None).expect("file");
        assert_eq!(from_file.public(), file_key.public());

        // env (bare hex) beats the file
        let from_env =
            load_or_create_root_key(dir.path(), Some(&key_path), Some(HEX)).expect("env hex");
        let expected = parse_private_key(&format!("ed25519-private/{HEX}")).expect("prefixed");
        assert_eq!(from_env.public(), expected.public());
        assert_ne!(from_env.public(), file_key.public());

        // env in biscuit's prefixed string form
        let prefixed = file_key.private().to_prefixed_string();
        let k = load_or_create_root_key(dir.path(), None, Some(&prefixed)).expect("env prefixed");
        assert_eq!(k.public(), file_key.public());

        // Neither explicit source should have created data_dir/root_key.
        assert!(!dir.path().join(ROOT_KEY_FILE).exists());
    }

    #[test]
    fn bad_keys_rejected_without_echoing_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secretish =
            "ed25519-private/zz1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
        for bad in ["", "nothex", secretish, &HEX[..62], "secp256r1-private/00"] {
            let err = load_or_create_root_key(dir.path(), None, Some(bad)).expect_err(bad);
            let msg = err.to_string();
            assert!(matches!(err, AuthError::Key(_)), "{msg}");
            assert!(!msg.contains("zz1e2d") && !msg.contains("0f1e2d"), "{msg}");
        }
        let missing = dir.path().join("missing.key");
        let err = load_or_create_root_key(dir.path(), Some(&missing), None).expect_err("missing");
        assert!(err.to_string().contains("missing.key"));
    }

    #[test]
    fn public_key_renders_in_biscuit_form_and_round_trips() {
        let key = parse_private_key(HEX).expect("hex");
        let text = public_key_string(&key);
        assert!(text.starts_with("ed25519/") && text.len() == "ed25519/".len() + 64);
        // What a verifier (biscuit's own parser) reads back is our public key.
        let parsed =
            <biscuit_auth::PublicKey as std::str::FromStr>::from_str(&text).expect("parse");
        assert_eq!(parsed, key.public());
        assert!(!text.contains(HEX));
    }
}
