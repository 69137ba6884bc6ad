//! Token verify / mint, and the server secret they share.
//!
//! A client proves who it is with an HS256 JWT whose `sub` is its user ID and
//! whose `exp` is honoured. The HMAC key is the *text* of the secret file with
//! surrounding ASCII whitespace trimmed, used as bytes: the file pushgate
//! generates holds 64 hex characters, and those 64 characters (not the 32
//! bytes they spell) are the key. A backend that mints its own tokens reads
//! the same file the same way.
//!
//! Time is passed in (`now_unix_s`) so that tests and callers decide what
//! "now" is; nothing here reads the clock.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Shortest secret accepted: HS256's key should be at least the hash size.
pub const SECRET_BYTES_MIN: usize = 32;
/// Random bytes in a generated secret (stored as twice as many hex chars).
const SECRET_RANDOM_BYTES: usize = 32;
/// Secret files larger than this are not secrets; refusing them keeps a
/// mistyped `--secret-file /var/log/big.log` from being read into memory.
const SECRET_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Name of the generated secret inside the run directory.
pub const SECRET_FILE_NAME: &str = "secret";
/// Longest user ID (`sub`) accepted, in UTF-8 bytes.
pub const USER_ID_BYTES_MAX: usize = 256;

/// The HS256 key shared by `verify` and `mint`.
///
/// Holds the keys ready to use so that verifying a token on the handshake path
/// does not rebuild them. `Debug` never prints the key material.
#[derive(Clone)]
pub struct Secret {
    encoding: EncodingKey,
    decoding: DecodingKey,
    len: usize,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes, redacted>)", self.len)
    }
}

/// Why the secret could not be loaded or created. Each message names the path
/// and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read secret file {}: {source}; check the path given by --secret-file / secret_file", path.display())]
    SecretFileRead { path: PathBuf, source: io::Error },

    #[error(
        "cannot read generated secret file {}: {source}; it must be a regular file (not a symlink) owned by this user \
         — delete it to generate a new one (tokens minted with the old secret will stop working)",
        path.display()
    )]
    GeneratedSecretRead { path: PathBuf, source: io::Error },

    #[error(
        "secret file {} holds {len} bytes after trimming whitespace, but an HS256 secret needs at least {SECRET_BYTES_MIN}; \
         write a longer one (e.g. `head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n' > FILE`)",
        path.display()
    )]
    SecretTooShort { path: PathBuf, len: usize },

    #[error(
        "generated secret file {} is damaged ({len} bytes, need at least {SECRET_BYTES_MIN}); \
         delete it to generate a new one (tokens minted with the old secret will stop working)",
        path.display()
    )]
    GeneratedSecretDamaged { path: PathBuf, len: usize },

    #[error("cannot create run directory {}: {source}; create it (mode 0700) or choose another with --run-dir", path.display())]
    RunDirCreate { path: PathBuf, source: io::Error },

    #[error("run directory {} is not a directory; remove it or choose another with --run-dir", path.display())]
    RunDirNotDir { path: PathBuf },

    #[error(
        "run directory {} belongs to uid {owner}, not to this user (uid {uid}), so its secret cannot be trusted; \
         remove it or choose another with --run-dir",
        path.display()
    )]
    RunDirNotOwned { path: PathBuf, owner: u32, uid: u32 },

    #[error("cannot create secret file {}: {source}; check that the run directory is writable or pass --secret-file", path.display())]
    SecretFileCreate { path: PathBuf, source: io::Error },

    #[error("cannot get random bytes from the kernel (getrandom): {0}")]
    Random(io::Error),
}

impl Secret {
    /// A secret from raw key bytes. For tests and for callers that hold the
    /// key already; no length check.
    pub fn from_bytes(bytes: Vec<u8>) -> Secret {
        Secret {
            encoding: EncodingKey::from_secret(&bytes),
            decoding: DecodingKey::from_secret(&bytes),
            len: bytes.len(),
        }
    }

    /// The secret `serve` and `token` use.
    ///
    /// - `secret_file` given: it must exist and hold at least
    ///   [`SECRET_BYTES_MIN`] bytes of text after trimming whitespace.
    /// - otherwise `<run_dir>/secret`: created on first start (run_dir with
    ///   mode 0700 if missing; the file with mode 0600, 32 random bytes from
    ///   `getrandom` written as 64 hex chars), reused afterwards.
    ///
    /// The generated file is published atomically: it is written and synced
    /// under a temporary name (`O_CREAT|O_EXCL`, 0600), then hard-linked into
    /// place, which fails if the name exists. Two processes starting at once
    /// therefore agree on one secret, and a reader never sees half a file.
    ///
    /// A secret file readable or writable by group or others is used but
    /// logged at `warn`, since anyone who can read it can mint tokens.
    pub fn load_or_create(run_dir: &Path, secret_file: Option<&Path>) -> Result<Secret, AuthError> {
        if let Some(path) = secret_file {
            // Follows symlinks: mounted secrets (Kubernetes, systemd
            // credentials) are usually links.
            let bytes =
                read_secret_file(path, false).map_err(|source| AuthError::SecretFileRead {
                    path: path.to_owned(),
                    source,
                })?;
            let key = bytes.trim_ascii();
            if key.len() < SECRET_BYTES_MIN {
                return Err(AuthError::SecretTooShort {
                    path: path.to_owned(),
                    len: key.len(),
                });
            }
            return Ok(Secret::from_bytes(key.to_vec()));
        }

        ensure_run_dir(run_dir)?;
        let path = run_dir.join(SECRET_FILE_NAME);
        let bytes = match read_secret_file(&path, true) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_secret_file(run_dir, &path)?,
            Err(source) => return Err(AuthError::GeneratedSecretRead { path, source }),
        };
        let key = bytes.trim_ascii();
        if key.len() < SECRET_BYTES_MIN {
            return Err(AuthError::GeneratedSecretDamaged {
                path,
                len: key.len(),
            });
        }
        Ok(Secret::from_bytes(key.to_vec()))
    }
}

/// Reads a secret file, warning when its mode lets group or others at it.
///
/// `no_follow` refuses a symlink in place of the generated file, so nobody can
/// point pushgate's own secret at a file of their choosing.
fn read_secret_file(path: &Path, no_follow: bool) -> io::Result<Vec<u8>> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    if no_follow {
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > SECRET_FILE_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {SECRET_FILE_BYTES_MAX} bytes, which is not a secret"),
        ));
    }
    if mode_is_loose(meta.mode()) {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:04o}", meta.mode() & 0o7777),
            "secret file is accessible to group or others, who could mint tokens; run `chmod 600 {}`",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take` bounds the read even if the file grows after the metadata check.
    file.take(SECRET_FILE_BYTES_MAX).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// True when group or others may read or write the file.
fn mode_is_loose(mode: u32) -> bool {
    mode & 0o066 != 0
}

/// Creates `run_dir` (0700) if needed and checks that this user owns it: the
/// default lives under /tmp, where another user could have made it first.
fn ensure_run_dir(run_dir: &Path) -> Result<(), AuthError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)
        .map_err(|source| AuthError::RunDirCreate {
            path: run_dir.to_owned(),
            source,
        })?;
    let meta = fs::metadata(run_dir).map_err(|source| AuthError::RunDirCreate {
        path: run_dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(AuthError::RunDirNotDir {
            path: run_dir.to_owned(),
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(AuthError::RunDirNotOwned {
            path: run_dir.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    Ok(())
}

/// Generates the secret and publishes it at `path` unless another process got
/// there first, in which case that one's secret is returned.
fn create_secret_file(run_dir: &Path, path: &Path) -> Result<Vec<u8>, AuthError> {
    let mut random = [0u8; SECRET_RANDOM_BYTES];
    fill_random(&mut random).map_err(AuthError::Random)?;
    let hex = to_hex(&random);

    let create_err = |source| AuthError::SecretFileCreate {
        path: path.to_owned(),
        source,
    };
    let tmp = run_dir.join(format!(".{SECRET_FILE_NAME}.{}.tmp", std::process::id()));
    // A crashed earlier process with our pid may have left this name behind;
    // the directory is ours (checked), so removing it is safe.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(create_err(e)),
    }
    let written = (|| -> io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true) // O_CREAT | O_EXCL
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(hex.as_bytes())?;
        file.sync_all()?;
        Ok(())
    })();
    let linked = written.and_then(|()| fs::hard_link(&tmp, path));
    // The temporary name has served its purpose whether or not the link won.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // Make the new directory entry durable too, so a crash cannot
            // lose a secret that tokens were already minted with.
            if let Ok(dir) = File::open(run_dir) {
                let _ = dir.sync_all();
            }
            tracing::info!(path = %path.display(), "generated a new token secret");
            Ok(hex.into_bytes())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Another process published first; use its secret so tokens
            // minted by either work with both.
            read_secret_file(path, true).map_err(|source| AuthError::GeneratedSecretRead {
                path: path.to_owned(),
                source,
            })
        }
        Err(e) => Err(create_err(e)),
    }
}

/// Fills `buf` from the kernel's CSPRNG, blocking until it is seeded.
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, a live, exclusively
        // borrowed byte slice; getrandom writes at most `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Why a token was refused. [`TokenError::reason`] is short enough for the
/// HTTP 401 body and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("{}", self.reason())]
    Missing,
    #[error("{}", self.reason())]
    Malformed,
    #[error("{}", self.reason())]
    BadSignature,
    #[error("{}", self.reason())]
    Expired,
    #[error("{}", self.reason())]
    BadSubject,
    #[error("{}", self.reason())]
    NotAdmin,
}

impl TokenError {
    /// A one-line, human reason; contains nothing from the token itself.
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "no token: send `Authorization: Bearer <jwt>` or `?token=<jwt>`",
            TokenError::Malformed => {
                "malformed token: expected an HS256 JWT with `sub` and integer `exp` claims"
            }
            TokenError::BadSignature => {
                "bad signature: token is not HS256-signed with this server's secret"
            }
            TokenError::Expired => "token expired: mint a new one",
            TokenError::NotAdmin => {
                "token lacks the admin scope: mint one with `pushgate token --admin`"
            }
            TokenError::BadSubject => {
                "bad `sub` claim: user ID must be 1 to 256 bytes with no control characters"
            }
        }
    }
}

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

#[derive(Deserialize)]
struct VerifyClaims {
    sub: Option<String>,
    exp: Option<u64>,
    scope: Option<String>,
}

/// The `scope` claim that opens the admin API (`/v1/push`, …).
pub const ADMIN_SCOPE: &str = "admin";

/// Signature and algorithm checks only; `exp` and `sub` are checked in
/// [`verify`] against the caller's `now`, because jsonwebtoken would read the
/// system clock and add leeway. Other claims (`nbf`, `aud`, `iss`) are
/// ignored: pushgate has no notion of audience or issuer.
static VALIDATION: LazyLock<Validation> = LazyLock::new(|| {
    let mut v = Validation::new(Algorithm::HS256);
    v.algorithms = vec![Algorithm::HS256];
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v
});

/// An HS256 JWT for `user` with `iat = now_unix_s` and
/// `exp = now_unix_s + ttl_s`.
///
/// Does not check `user`; call [`check_user_id`] first when it comes from
/// outside, or `verify` will refuse the token with `BadSubject`.
pub fn mint(secret: &Secret, user: &str, ttl_s: u64, now_unix_s: u64) -> String {
    mint_with_scope(secret, user, None, ttl_s, now_unix_s)
}

/// A token for the admin API (`scope: "admin"`, `sub: "admin"`).
pub fn mint_admin(secret: &Secret, ttl_s: u64, now_unix_s: u64) -> String {
    mint_with_scope(secret, ADMIN_SCOPE, Some(ADMIN_SCOPE), ttl_s, now_unix_s)
}

fn mint_with_scope(
    secret: &Secret,
    user: &str,
    scope: Option<&str>,
    ttl_s: u64,
    now_unix_s: u64,
) -> String {
    let claims = MintClaims {
        sub: user,
        iat: now_unix_s,
        exp: now_unix_s.saturating_add(ttl_s),
        scope,
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &secret.encoding)
        .expect("HS256 signing of a plain struct cannot fail")
}

/// Verifies an admin API token: a valid token whose `scope` is "admin".
pub fn verify_admin(secret: &Secret, token: &str, now_unix_s: u64) -> Result<(), TokenError> {
    let claims = verify_claims(secret, token, now_unix_s)?;
    if claims.scope.as_deref() != Some(ADMIN_SCOPE) {
        return Err(TokenError::NotAdmin);
    }
    Ok(())
}

/// Verifies `token` and returns its user ID (`sub`).
///
/// Accepts only `alg: HS256` signed with `secret` (so `none` and every other
/// algorithm are refused), with an integer `exp` strictly after `now_unix_s`
/// (no leeway: a token is dead at its `exp` second) and a `sub` accepted by
/// [`check_user_id`].
pub fn verify(secret: &Secret, token: &str, now_unix_s: u64) -> Result<String, TokenError> {
    let claims = verify_claims(secret, token, now_unix_s)?;
    let sub = claims.sub.ok_or(TokenError::BadSubject)?;
    check_user_id(&sub)?;
    Ok(sub)
}

/// Signature, algorithm and expiry; the caller checks `sub` / `scope`.
fn verify_claims(
    secret: &Secret,
    token: &str,
    now_unix_s: u64,
) -> Result<VerifyClaims, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    let data = jsonwebtoken::decode::<VerifyClaims>(token, &secret.decoding, &VALIDATION).map_err(
        |e| {
            match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    TokenError::BadSignature
                }
                // Bad shape, base64, JSON, UTF-8, or an `alg` the library does not
                // even know (such as "none").
                _ => TokenError::Malformed,
            }
        },
    )?;
    let exp = data.claims.exp.ok_or(TokenError::Malformed)?;
    if now_unix_s >= exp {
        return Err(TokenError::Expired);
    }
    Ok(data.claims)
}

/// Checks a user ID: 1 to [`USER_ID_BYTES_MAX`] bytes of UTF-8 and no control
/// characters (they would corrupt log lines and the push wire format).
pub fn check_user_id(user: &str) -> Result<(), TokenError> {
    if user.is_empty() || user.len() > USER_ID_BYTES_MAX || user.chars().any(char::is_control) {
        return Err(TokenError::BadSubject);
    }
    Ok(())
}

/// The token a WebSocket upgrade request carries.
///
/// `Authorization: Bearer <t>` (scheme case-insensitive) wins; otherwise the
/// `token` query parameter, which browsers must use because they cannot set
/// headers on a WebSocket. The query value is taken as it appears: a JWT uses
/// only URL-safe characters, so it needs no percent-decoding. Empty values
/// count as absent.
pub fn token_from_request<'a>(
    authorization: Option<&'a str>,
    token_query_param: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(token) = authorization.and_then(bearer_token) {
        return Some(token);
    }
    token_query_param.map(str::trim).filter(|t| !t.is_empty())
}

/// The credentials of an `Authorization: Bearer <t>` value, if that is what
/// it is (RFC 6750 §2.1; RFC 7235 makes the scheme case-insensitive).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(rest.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
