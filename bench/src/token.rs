//! Tokens for the bench's users, minted with the server's own code so the
//! bench and the server can never disagree on the format.

use std::io::Read;
use std::path::{Path, PathBuf};

use pushgate::auth::{self, Secret};

/// The secret file holds 64 hex characters; anything this big is not it
/// (the server refuses over 64 KiB too).
const SECRET_FILE_MAX_BYTES: u64 = 64 * 1024;

/// Tokens outlive any bench run; the server checks `exp` only at upgrade.
pub const TOKEN_TTL_S: u64 = 24 * 3600;

/// The secret file the server generates inside its run directory.
pub fn secret_file_in_run_dir(run_dir: &Path) -> Result<PathBuf, String> {
    let path = run_dir.join(auth::SECRET_FILE_NAME);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no secret file {} (has the server started?); or pass --secret-file",
            path.display()
        ))
    }
}

/// Reads the secret the way the server does: the file's text with ASCII
/// whitespace trimmed, used as the raw HMAC key bytes (the hex is not decoded).
pub fn read_secret(path: &Path) -> Result<Secret, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(SECRET_FILE_MAX_BYTES).read_to_end(&mut bytes))
        .map_err(|e| format!("secret file {}: {e}", path.display()))?;
    let key = bytes.trim_ascii();
    if key.len() < auth::SECRET_BYTES_MIN {
        return Err(format!(
            "secret file {} holds {} bytes after trimming; the server wants at least {}",
            path.display(),
            key.len(),
            auth::SECRET_BYTES_MIN
        ));
    }
    Ok(Secret::from_bytes(key.to_vec()))
}

/// The user id of global connection `index`: one user per connection, so the
/// server holds N users, not N devices of one.
pub fn user_id(index: u64) -> String {
    format!("bench-{index}")
}

/// A bearer token for global connection `index`.
pub fn mint(secret: &Secret, index: u64, now_unix_s: u64) -> String {
    auth::mint(secret, &user_id(index), TOKEN_TTL_S, now_unix_s)
}

pub fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_with_the_servers_code_and_name_the_user() {
        let dir = std::env::temp_dir().join(format!("pushgate-bench-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let hex = "0123456789abcdef".repeat(4);
        std::fs::write(dir.join(auth::SECRET_FILE_NAME), format!("{hex}\n")).unwrap();
        let path = secret_file_in_run_dir(&dir).unwrap();
        let secret = read_secret(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        let now_unix_s = now_unix_s();
        let token = mint(&secret, 7, now_unix_s);
        // The server keys HMAC with the 64 characters themselves.
        let server_secret = Secret::from_bytes(hex.into_bytes());
        assert_eq!(
            auth::verify(&server_secret, &token, now_unix_s).unwrap(),
            "bench-7"
        );
        assert!(auth::verify(&Secret::from_bytes(vec![b'x'; 64]), &token, now_unix_s).is_err());
    }

    #[test]
    fn short_or_missing_secrets_are_refused() {
        let dir =
            std::env::temp_dir().join(format!("pushgate-bench-nosecret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(secret_file_in_run_dir(&dir).is_err());
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").unwrap();
        assert!(read_secret(&short).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
