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
}

#[derive(Deserialize)]
struct VerifyClaims {
    sub: Option<String>,
    exp: Option<u64>,
}

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
    let claims = MintClaims {
        sub: user,
        iat: now_unix_s,
        exp: now_unix_s.saturating_add(ttl_s),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &secret.encoding)
        .expect("HS256 signing of a plain struct cannot fail")
}

/// Verifies `token` and returns its user ID (`sub`).
///
/// Accepts only `alg: HS256` signed with `secret` (so `none` and every other
/// algorithm are refused), with an integer `exp` strictly after `now_unix_s`
/// (no leeway: a token is dead at its `exp` second) and a `sub` accepted by
/// [`check_user_id`].
pub fn verify(secret: &Secret, token: &str, now_unix_s: u64) -> Result<String, TokenError> {
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
    let sub = data.claims.sub.ok_or(TokenError::BadSubject)?;
    check_user_id(&sub)?;
    Ok(sub)
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
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const NOW: u64 = 1_700_000_000;

    fn secret() -> Secret {
        Secret::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
            let mut random = [0u8; 8];
            fill_random(&mut random).unwrap();
            let path =
                std::env::temp_dir().join(format!("pushgate-auth-{name}-{}", to_hex(&random)));
            fs::create_dir(&path).unwrap();
            TempDir(path)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn mint_verify_round_trip() {
        let token = mint(&secret(), "alice", 60, NOW);
        assert_eq!(verify(&secret(), &token, NOW).unwrap(), "alice");
        assert_eq!(verify(&secret(), &token, NOW + 59).unwrap(), "alice");
    }

    #[test]
    fn expired_at_exp() {
        let token = mint(&secret(), "alice", 60, NOW);
        assert_eq!(
            verify(&secret(), &token, NOW + 60),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&secret(), &token, NOW + 3600),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        let token = mint(&secret(), "alice", 60, NOW);
        let other = Secret::from_bytes(b"another-secret-another-secret-xx".to_vec());
        assert_eq!(verify(&other, &token, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampered_payload_is_bad_signature() {
        let token = mint(&secret(), "alice", 60, NOW);
        let parts: Vec<&str> = token.split('.').collect();
        let forged =
            b64(format!(r#"{{"sub":"mallory","iat":{NOW},"exp":{}}}"#, NOW + 60).as_bytes());
        let token = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(
            verify(&secret(), &token, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let claims = b64(format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60).as_bytes());
        for token in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
            assert_eq!(
                verify(&secret(), &token, NOW),
                Err(TokenError::Malformed),
                "{token}"
            );
        }
    }

    #[test]
    fn other_hmac_alg_is_refused() {
        // Signed with the right key but HS512: the algorithm is pinned.
        let claims = MintClaims {
            sub: "alice",
            iat: NOW,
            exp: NOW + 60,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &secret().encoding)
                .unwrap();
        assert_eq!(
            verify(&secret(), &token, NOW),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for token in [
            "x",
            "a.b.c",
            "...",
            "not a token at all",
            "eyJhbGciOiJIUzI1NiJ9.e30",
        ] {
            assert_eq!(
                verify(&secret(), token, NOW),
                Err(TokenError::Malformed),
                "{token}"
            );
        }
        assert_eq!(verify(&secret(), "", NOW), Err(TokenError::Missing));
    }

    /// Signs arbitrary claims JSON with the test secret.
    fn signed(claims_json: &str) -> String {
        let claims: serde_json::Value = serde_json::from_str(claims_json).unwrap();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &secret().encoding).unwrap()
    }

    #[test]
    fn exp_is_required() {
        let token = signed(r#"{"sub":"alice"}"#);
        assert_eq!(verify(&secret(), &token, NOW), Err(TokenError::Malformed));
        let token = signed(r#"{"sub":"alice","exp":"tomorrow"}"#);
        assert_eq!(verify(&secret(), &token, NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn subject_rules() {
        let exp = NOW + 60;
        let long = "x".repeat(USER_ID_BYTES_MAX);
        let too_long = "x".repeat(USER_ID_BYTES_MAX + 1);
        assert_eq!(
            verify(
                &secret(),
                &signed(&format!(r#"{{"sub":"{long}","exp":{exp}}}"#)),
                NOW
            )
            .unwrap(),
            long
        );
        for claims in [
            format!(r#"{{"exp":{exp}}}"#),
            format!(r#"{{"sub":"","exp":{exp}}}"#),
            format!(r#"{{"sub":"{too_long}","exp":{exp}}}"#),
            format!(r#"{{"sub":"al\nice","exp":{exp}}}"#),
            format!(r#"{{"sub":"al\u0000ice","exp":{exp}}}"#),
            format!(r#"{{"sub":"al\u007fice","exp":{exp}}}"#),
        ] {
            assert_eq!(
                verify(&secret(), &signed(&claims), NOW),
                Err(TokenError::BadSubject),
                "{claims}"
            );
        }
        // Unicode is fine; the limit is bytes.
        assert_eq!(
            verify(&secret(), &mint(&secret(), "ユーザー", 60, NOW), NOW).unwrap(),
            "ユーザー"
        );
    }

    #[test]
    fn reasons_are_display() {
        for e in [
            TokenError::Missing,
            TokenError::Malformed,
            TokenError::BadSignature,
            TokenError::Expired,
            TokenError::BadSubject,
        ] {
            assert_eq!(e.to_string(), e.reason());
            assert!(!e.reason().contains('\n'));
        }
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = format!("{:?}", secret());
        assert!(!s.contains("0123"), "{s}");
        assert!(s.contains("32 bytes"), "{s}");
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(token_from_request(Some("Bearer abc"), None), Some("abc"));
        assert_eq!(token_from_request(Some("bearer abc"), None), Some("abc"));
        assert_eq!(token_from_request(Some("BEARER  abc "), None), Some("abc"));
        assert_eq!(token_from_request(Some("Bearer\tabc"), None), Some("abc"));
        // Header wins over the query.
        assert_eq!(
            token_from_request(Some("Bearer abc"), Some("def")),
            Some("abc")
        );
        // Not a bearer header: fall back to the query.
        assert_eq!(
            token_from_request(Some("Basic dXNlcjpwdw=="), Some("def")),
            Some("def")
        );
        assert_eq!(token_from_request(Some("Bearer"), Some("def")), Some("def"));
        assert_eq!(
            token_from_request(Some("Bearer   "), Some("def")),
            Some("def")
        );
        assert_eq!(token_from_request(Some("Bearerabc"), None), None);
        assert_eq!(token_from_request(None, Some("def")), Some("def"));
        assert_eq!(token_from_request(None, Some("")), None);
        assert_eq!(token_from_request(None, None), None);
    }

    #[test]
    fn secret_file_created_0600_and_reused() {
        let tmp = TempDir::new("create");
        let run_dir = tmp.0.join("nested").join("run");
        let first = Secret::load_or_create(&run_dir, None).unwrap();

        let dir_mode = fs::metadata(&run_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let path = run_dir.join(SECRET_FILE_NAME);
        let file_mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(file_mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 64);
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
        // No temporary file left behind.
        assert_eq!(fs::read_dir(&run_dir).unwrap().count(), 1);

        // Reused: a token minted with the first load verifies with the second,
        // and the file is unchanged.
        let second = Secret::load_or_create(&run_dir, None).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        let token = mint(&first, "alice", 60, NOW);
        assert_eq!(verify(&second, &token, NOW).unwrap(), "alice");
        // The key is the hex text, so --secret-file pointed at it agrees.
        let explicit = Secret::load_or_create(Path::new("/nonexistent"), Some(&path)).unwrap();
        assert_eq!(verify(&explicit, &token, NOW).unwrap(), "alice");
    }

    #[test]
    fn existing_secret_file_is_used() {
        let tmp = TempDir::new("existing");
        let path = tmp.0.join("key");
        fs::write(&path, "  correct horse battery staple 0123456789\n").unwrap();
        let loaded = Secret::load_or_create(&tmp.0, Some(&path)).unwrap();
        let expected = Secret::from_bytes(b"correct horse battery staple 0123456789".to_vec());
        let token = mint(&expected, "bob", 60, NOW);
        assert_eq!(verify(&loaded, &token, NOW).unwrap(), "bob");
        // An explicit file does not create one in the run dir.
        assert!(!tmp.0.join(SECRET_FILE_NAME).exists());
    }

    #[test]
    fn short_secret_file_rejected() {
        let tmp = TempDir::new("short");
        let path = tmp.0.join("key");
        // 31 bytes once trimmed.
        fs::write(&path, format!("{}\n\n", "k".repeat(SECRET_BYTES_MIN - 1))).unwrap();
        let err = Secret::load_or_create(&tmp.0, Some(&path)).unwrap_err();
        assert!(
            matches!(err, AuthError::SecretTooShort { len: 31, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("at least 32"), "{err}");
    }

    #[test]
    fn missing_secret_file_rejected() {
        let tmp = TempDir::new("missing");
        let err = Secret::load_or_create(&tmp.0, Some(&tmp.0.join("nope"))).unwrap_err();
        assert!(matches!(err, AuthError::SecretFileRead { .. }), "{err}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn damaged_generated_secret_rejected() {
        let tmp = TempDir::new("damaged");
        fs::write(tmp.0.join(SECRET_FILE_NAME), "").unwrap();
        let err = Secret::load_or_create(&tmp.0, None).unwrap_err();
        assert!(
            matches!(err, AuthError::GeneratedSecretDamaged { len: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn generated_secret_symlink_refused() {
        let tmp = TempDir::new("symlink");
        let target = tmp.0.join("elsewhere");
        fs::write(&target, "x".repeat(64)).unwrap();
        std::os::unix::fs::symlink(&target, tmp.0.join(SECRET_FILE_NAME)).unwrap();
        let err = Secret::load_or_create(&tmp.0, None).unwrap_err();
        assert!(
            matches!(err, AuthError::GeneratedSecretRead { .. }),
            "{err}"
        );
    }

    #[test]
    fn run_dir_owned_by_someone_else_rejected() {
        let tmp = TempDir::new("foreign");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let uid = unsafe { libc::geteuid() };
        let foreign = if uid == 0 {
            // As root, hand a fresh directory to `nobody`.
            let dir = tmp.0.join("theirs");
            fs::create_dir(&dir).unwrap();
            std::os::unix::fs::chown(&dir, Some(65_534), Some(65_534)).unwrap();
            dir
        } else if fs::metadata("/").unwrap().uid() != uid {
            // As anyone else, / normally belongs to root; the ownership check
            // comes before any write, so nothing is created there.
            PathBuf::from("/")
        } else {
            eprintln!("skipped: no directory owned by another user to try");
            return;
        };
        let err = Secret::load_or_create(&foreign, None).unwrap_err();
        assert!(matches!(err, AuthError::RunDirNotOwned { .. }), "{err}");
        assert!(err.to_string().contains("--run-dir"), "{err}");
    }

    #[test]
    fn run_dir_that_is_a_file_rejected() {
        let tmp = TempDir::new("notdir");
        let file = tmp.0.join("file");
        fs::write(&file, "").unwrap();
        let err = Secret::load_or_create(&file, None).unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::RunDirCreate { .. } | AuthError::RunDirNotDir { .. }
            ),
            "{err}"
        );
    }

    #[test]
    fn loose_modes() {
        assert!(!mode_is_loose(0o100600));
        assert!(!mode_is_loose(0o100400));
        assert!(mode_is_loose(0o100640));
        assert!(mode_is_loose(0o100604));
        assert!(mode_is_loose(0o100620));
    }

    #[test]
    fn hex() {
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
