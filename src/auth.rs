//! Token verify / mint, and the server secret they share.
//!
//! A client proves who it is with an HS256 JWT whose `sub` is its user ID and
//! whose `exp` (and `nbf`, when present) is honoured. Admin tokens carry
//! `aud: "pushgate-admin"`; neither kind of token is accepted as the other
//! (see [`verify`] and [`verify_admin`]). The HMAC key is the *text* of the secret file with
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
        "run directory {} belongs to uid {owner}, not to this user (uid {uid}), so its secret and push sockets cannot be trusted; \
         remove it or choose another with --run-dir",
        path.display()
    )]
    RunDirNotOwned { path: PathBuf, owner: u32, uid: u32 },

    #[error(
        "run directory {} has mode {mode:04o}: group or others can write to it, so they could replace the secret or the push sockets; \
         run `chmod go-w {}` (pushgate creates it 0700) or choose another with --run-dir",
        path.display(),
        path.display()
    )]
    RunDirWritableByOthers { path: PathBuf, mode: u32 },

    #[error(
        "generated secret file {} belongs to uid {owner}, not to this user (uid {uid}): whoever placed it knows the key and could mint tokens; \
         delete it to generate a new one (tokens minted with the old secret will stop working), and check who else can write to the run directory",
        path.display()
    )]
    GeneratedSecretNotOwned { path: PathBuf, owner: u32, uid: u32 },

    #[error(
        "secret file {} belongs to uid {owner}, neither this user (uid {uid}) nor root: its owner knows the key and could mint tokens; \
         `chown {uid} {}` it or point --secret-file / secret_file at a file this user owns",
        path.display(),
        path.display()
    )]
    SecretFileNotOwned { path: PathBuf, owner: u32, uid: u32 },

    #[error(
        "secret file {} has mode {mode:04o}: group or others can write it and so choose the key; run `chmod go-w {}` (0600, or 0640 for a group of backends that mint tokens)",
        path.display(),
        path.display()
    )]
    SecretFileWritableByOthers { path: PathBuf, mode: u32 },

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
    /// The run directory is checked (and created) either way, because the
    /// push sockets live there too: it must belong to this user and must
    /// not be writable by group or others ([`ensure_run_dir`]).
    ///
    /// - `secret_file` given: it must exist, belong to this user or root
    ///   (mounted secrets and systemd credentials are root's), not be
    ///   writable by group or others, and hold at least
    ///   [`SECRET_BYTES_MIN`] bytes of text after trimming whitespace.
    /// - otherwise `<run_dir>/secret`: created on first start (run_dir with
    ///   mode 0700 if missing; the file with mode 0600, 32 random bytes from
    ///   `getrandom` written as 64 hex chars), reused afterwards. An existing
    ///   one must be a regular file (not a symlink) owned by this user and
    ///   not writable by group or others: a file someone else placed there
    ///   has a key they know.
    ///
    /// The generated file is published atomically: it is written and synced
    /// under a temporary name (`O_CREAT|O_EXCL`, 0600), then hard-linked into
    /// place, which fails if the name exists. Two processes starting at once
    /// therefore agree on one secret, and a reader never sees half a file.
    ///
    /// A secret file readable by group or others is used but logged at
    /// `warn`: a group of backends that mint their own tokens may need to
    /// read it, but anyone who can read it can mint tokens.
    pub fn load_or_create(run_dir: &Path, secret_file: Option<&Path>) -> Result<Secret, AuthError> {
        Secret::load(run_dir, secret_file, SecretKind::Operator)
    }

    /// The secret `token` mints with: as [`Secret::load_or_create`], except
    /// that a `secret_file` may belong to anyone. Minting trusts nobody's
    /// tokens, and the server that verifies them checks the owner itself;
    /// the documented `sudo pushgate token --config …` reads the service
    /// user's secret as root.
    pub fn load_to_mint(run_dir: &Path, secret_file: Option<&Path>) -> Result<Secret, AuthError> {
        Secret::load(run_dir, secret_file, SecretKind::OperatorAnyOwner)
    }

    fn load(
        run_dir: &Path,
        secret_file: Option<&Path>,
        operator_kind: SecretKind,
    ) -> Result<Secret, AuthError> {
        ensure_run_dir(run_dir)?;
        if let Some(path) = secret_file {
            // Follows symlinks: mounted secrets (Kubernetes, systemd
            // credentials) are usually links. The checks apply to the file
            // the link leads to (fstat of the opened file).
            let file = open_secret_file(path, operator_kind).map_err(|source| {
                AuthError::SecretFileRead {
                    path: path.to_owned(),
                    source,
                }
            })?;
            let bytes = read_secret_file(file, path, operator_kind)?;
            let key = bytes.trim_ascii();
            if key.len() < SECRET_BYTES_MIN {
                return Err(AuthError::SecretTooShort {
                    path: path.to_owned(),
                    len: key.len(),
                });
            }
            return Ok(Secret::from_bytes(key.to_vec()));
        }

        let path = run_dir.join(SECRET_FILE_NAME);
        let bytes = match open_secret_file(&path, SecretKind::Generated) {
            Ok(file) => read_secret_file(file, &path, SecretKind::Generated)?,
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

/// Whose secret file it is: the rules differ in who may own it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SecretKind {
    /// `--secret-file`: the operator's file; may be root's and a symlink.
    Operator,
    /// `--secret-file` read only to mint tokens: any owner.
    OperatorAnyOwner,
    /// `<run_dir>/secret`: pushgate's own; must be this user's, no symlink.
    Generated,
}

/// Opens a secret file for reading. For the generated file, `O_NOFOLLOW`
/// refuses a symlink in its place, so nobody can point pushgate's own
/// secret at a file of their choosing.
fn open_secret_file(path: &Path, kind: SecretKind) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    if kind == SecretKind::Generated {
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

/// Checks an opened secret file (type, size, owner, mode) and reads it,
/// warning when group or others may read it.
fn read_secret_file(file: File, path: &Path, kind: SecretKind) -> Result<Vec<u8>, AuthError> {
    let read_error = |source: io::Error| match kind {
        SecretKind::Operator | SecretKind::OperatorAnyOwner => AuthError::SecretFileRead {
            path: path.to_owned(),
            source,
        },
        SecretKind::Generated => AuthError::GeneratedSecretRead {
            path: path.to_owned(),
            source,
        },
    };
    // fstat of the opened file: what is checked is what is read.
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(read_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    if meta.len() > SECRET_FILE_BYTES_MAX {
        return Err(read_error(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {SECRET_FILE_BYTES_MAX} bytes, which is not a secret"),
        )));
    }
    let uid = effective_uid();
    let owner_ok = match kind {
        SecretKind::Generated => meta.uid() == uid,
        // Root can read every file anyway, so a root-owned secret tells
        // nobody new the key.
        SecretKind::Operator => meta.uid() == uid || meta.uid() == ROOT_UID,
        SecretKind::OperatorAnyOwner => true,
    };
    if !owner_ok {
        let (path, owner) = (path.to_owned(), meta.uid());
        return Err(match kind {
            SecretKind::Generated => AuthError::GeneratedSecretNotOwned { path, owner, uid },
            SecretKind::Operator | SecretKind::OperatorAnyOwner => {
                AuthError::SecretFileNotOwned { path, owner, uid }
            }
        });
    }
    if mode_is_writable_by_others(meta.mode()) {
        return Err(AuthError::SecretFileWritableByOthers {
            path: path.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    if mode_is_loose(meta.mode()) {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:04o}", meta.mode() & 0o7777),
            "secret file is readable by group or others, who could mint tokens; run `chmod 600 {}` unless they must",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take` bounds the read even if the file grows after the metadata check.
    file.take(SECRET_FILE_BYTES_MAX)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    Ok(bytes)
}

/// The owner of files nobody else could have placed: root.
const ROOT_UID: u32 = 0;

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// True when group or others may read or write the file.
fn mode_is_loose(mode: u32) -> bool {
    mode & 0o066 != 0
}

/// True when group or others may write (to a file: change it; to a
/// directory: add, remove or rename what is in it).
fn mode_is_writable_by_others(mode: u32) -> bool {
    mode & 0o022 != 0
}

/// Creates `run_dir` (0700) if needed and checks that this user owns it and
/// that nobody else may write to it: the default lives under /tmp, where
/// another user could have made it first, and it holds the generated secret
/// and the push sockets. (The directories above it are not checked: a run
/// directory under another user's directory is that user's to replace.)
pub fn ensure_run_dir(run_dir: &Path) -> Result<(), AuthError> {
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
    let uid = effective_uid();
    if meta.uid() != uid {
        return Err(AuthError::RunDirNotOwned {
            path: run_dir.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    if mode_is_writable_by_others(meta.mode()) {
        return Err(AuthError::RunDirWritableByOthers {
            path: run_dir.to_owned(),
            mode: meta.mode() & 0o7777,
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
            let file = open_secret_file(path, SecretKind::Generated).map_err(|source| {
                AuthError::GeneratedSecretRead {
                    path: path.to_owned(),
                    source,
                }
            })?;
            read_secret_file(file, path, SecretKind::Generated)
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
    CriticalHeader,
    #[error("{}", self.reason())]
    BadSignature,
    #[error("{}", self.reason())]
    Expired,
    #[error("{}", self.reason())]
    NotYetValid,
    #[error("{}", self.reason())]
    BadSubject,
    #[error("{}", self.reason())]
    NotClient,
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
            TokenError::CriticalHeader => {
                "token header has `crit`: pushgate understands no JWS extensions, so it must refuse the token"
            }
            TokenError::BadSignature => {
                "bad signature: token is not HS256-signed with this server's secret"
            }
            TokenError::Expired => "token expired: mint a new one",
            TokenError::NotYetValid => {
                "token not valid yet (`nbf` is in the future): check the clocks of the minting host and this server"
            }
            TokenError::NotClient => {
                "token is not for clients: its `aud` names another audience (an admin token, or one for another service)"
            }
            TokenError::NotAdmin => {
                "not an admin token (`aud` must be pushgate-admin): mint one with `pushgate token --admin`"
            }
            TokenError::BadSubject => {
                "bad `sub` claim: user ID must be 1 to 256 bytes of UTF-8 with no control, format (bidi, zero-width) or line/paragraph separator characters"
            }
        }
    }
}

/// The `aud` of client tokens pushgate mints. Client tokens without `aud`
/// (the documented minimal form: `sub`, `exp`) are client tokens too.
pub const CLIENT_AUDIENCE: &str = "pushgate-client";
/// The `aud` every admin token must carry (`/v1/push`, …).
pub const ADMIN_AUDIENCE: &str = "pushgate-admin";
/// The `scope` claim admin tokens carried before they had an audience; a
/// token with it is never a client token.
const LEGACY_ADMIN_SCOPE: &str = "admin";
/// Clock leeway for both `exp` and `nbf`, in seconds. None: a token is dead
/// from its `exp` second and alive from its `nbf` second, so hosts that mint
/// tokens and pushgate must keep their clocks in sync (NTP).
const CLOCK_LEEWAY_S: u64 = 0;

#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn names(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

#[derive(Deserialize)]
struct VerifyClaims {
    sub: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    aud: Option<Audience>,
    scope: Option<String>,
}

/// The header members pushgate looks at beyond what jsonwebtoken checks.
#[derive(Deserialize)]
struct HeaderExtensions {
    /// Present at all (even `null` or `[]`, which RFC 7515 forbids): refused.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

/// Signature and algorithm checks only; `exp`, `nbf`, `aud` and `sub` are
/// checked in [`verify_claims`] against the caller's `now`, because
/// jsonwebtoken would read the system clock. `iss` is ignored: pushgate has
/// no notion of issuer.
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

/// An HS256 JWT for `user` with `aud = "pushgate-client"`,
/// `iat = now_unix_s` and `exp = now_unix_s + ttl_s`.
///
/// Does not check `user`; call [`check_user_id`] first when it comes from
/// outside, or `verify` will refuse the token with `BadSubject`.
pub fn mint(secret: &Secret, user: &str, ttl_s: u64, now_unix_s: u64) -> String {
    mint_for(secret, user, CLIENT_AUDIENCE, ttl_s, now_unix_s)
}

/// A token for the admin API (`aud: "pushgate-admin"`, `sub: "admin"`).
pub fn mint_admin(secret: &Secret, ttl_s: u64, now_unix_s: u64) -> String {
    mint_for(secret, "admin", ADMIN_AUDIENCE, ttl_s, now_unix_s)
}

fn mint_for(secret: &Secret, sub: &str, aud: &str, ttl_s: u64, now_unix_s: u64) -> String {
    let claims = MintClaims {
        sub,
        aud,
        iat: now_unix_s,
        exp: now_unix_s.saturating_add(ttl_s),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &secret.encoding)
        .expect("HS256 signing of a plain struct cannot fail")
}

/// Verifies an admin API token: valid (as for [`verify`]) and with an `aud`
/// that names `pushgate-admin` and not `pushgate-client`. A client token is
/// refused with `NotAdmin`.
pub fn verify_admin(secret: &Secret, token: &str, now_unix_s: u64) -> Result<(), TokenError> {
    let claims = verify_claims(secret, token, now_unix_s)?;
    match &claims.aud {
        Some(aud) if aud.names(ADMIN_AUDIENCE) && !aud.names(CLIENT_AUDIENCE) => Ok(()),
        _ => Err(TokenError::NotAdmin),
    }
}

/// Verifies a client token and returns its user ID (`sub`).
///
/// Accepts only `alg: HS256` signed with `secret` (so `none` and every other
/// algorithm are refused), with no `crit` header, an integer `exp` strictly
/// after `now_unix_s` (no leeway: a token is dead at its `exp` second), an
/// integer `nbf` not after `now_unix_s` if present, and a `sub` accepted by
/// [`check_user_id`]. `aud`, if present, must name `pushgate-client` and not
/// `pushgate-admin`: an admin token is refused with `NotClient` (it would
/// otherwise act as user "admin"), as is one for another service.
pub fn verify(secret: &Secret, token: &str, now_unix_s: u64) -> Result<String, TokenError> {
    let claims = verify_claims(secret, token, now_unix_s)?;
    let for_clients = match &claims.aud {
        None => claims.scope.as_deref() != Some(LEGACY_ADMIN_SCOPE),
        Some(aud) => aud.names(CLIENT_AUDIENCE) && !aud.names(ADMIN_AUDIENCE),
    };
    if !for_clients {
        return Err(TokenError::NotClient);
    }
    let sub = claims.sub.ok_or(TokenError::BadSubject)?;
    check_user_id(&sub)?;
    Ok(sub)
}

/// Header, signature, algorithm and validity period; the caller checks
/// `aud` and `sub`.
fn verify_claims(
    secret: &Secret,
    token: &str,
    now_unix_s: u64,
) -> Result<VerifyClaims, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    refuse_critical_header(token)?;
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
    if now_unix_s >= exp.saturating_add(CLOCK_LEEWAY_S) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = data.claims.nbf {
        if now_unix_s.saturating_add(CLOCK_LEEWAY_S) < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    Ok(data.claims)
}

/// RFC 7515 §4.1.11: a recipient that does not understand every extension
/// `crit` lists must refuse the token. pushgate understands none, and
/// jsonwebtoken ignores the member, so any `crit` is refused here.
fn refuse_critical_header(token: &str) -> Result<(), TokenError> {
    use base64::Engine;
    let header_b64 = token.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|_| TokenError::Malformed)?;
    let header: HeaderExtensions =
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if header.crit {
        return Err(TokenError::CriticalHeader);
    }
    Ok(())
}

/// Checks a user ID: 1 to [`USER_ID_BYTES_MAX`] bytes of UTF-8, and none of
/// the characters that would let one ID pass for another in a log line or a
/// UI, or break a line:
///
/// - control characters: C0 (U+0000–U+001F), DEL (U+007F), C1
///   (U+0080–U+009F);
/// - Unicode format characters (general category Cf), which are invisible
///   or change how the text around them is shown: the bidi controls
///   (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), the
///   zero-width ones (U+200B–U+200D, U+2060, U+FEFF), the soft hyphen
///   (U+00AD), the tag characters (U+E0001, U+E0020–U+E007F) and the rest
///   of [`FORMAT_CHARS`];
/// - the line and paragraph separators U+2028 and U+2029.
///
/// Everything else (letters of any script, digits, punctuation, symbols,
/// emoji, spaces) is allowed.
pub fn check_user_id(user: &str) -> Result<(), TokenError> {
    if user.is_empty()
        || user.len() > USER_ID_BYTES_MAX
        || user.chars().any(is_forbidden_in_user_id)
    {
        return Err(TokenError::BadSubject);
    }
    Ok(())
}

fn is_forbidden_in_user_id(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}')
        || FORMAT_CHARS.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// Unicode's format characters (general category Cf, Unicode 15.1), as
/// inclusive ranges. U+2065 (unassigned, between two Cf runs) is included so
/// the run stays one range.
pub const FORMAT_CHARS: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),   // soft hyphen
    ('\u{0600}', '\u{0605}'),   // Arabic number signs
    ('\u{061C}', '\u{061C}'),   // Arabic letter mark (bidi)
    ('\u{06DD}', '\u{06DD}'),   // Arabic end of ayah
    ('\u{070F}', '\u{070F}'),   // Syriac abbreviation mark
    ('\u{0890}', '\u{0891}'),   // Arabic pound / piastre mark above
    ('\u{08E2}', '\u{08E2}'),   // Arabic disputed end of ayah
    ('\u{180E}', '\u{180E}'),   // Mongolian vowel separator
    ('\u{200B}', '\u{200F}'),   // zero-width space, ZWNJ, ZWJ, LRM, RLM
    ('\u{202A}', '\u{202E}'),   // bidi embeddings and overrides
    ('\u{2060}', '\u{206F}'),   // word joiner, invisible operators, bidi isolates, deprecated
    ('\u{FEFF}', '\u{FEFF}'),   // zero-width no-break space (BOM)
    ('\u{FFF9}', '\u{FFFB}'),   // interlinear annotation
    ('\u{110BD}', '\u{110BD}'), // Kaithi number sign
    ('\u{110CD}', '\u{110CD}'), // Kaithi number sign above
    ('\u{13430}', '\u{1343F}'), // Egyptian hieroglyph format controls
    ('\u{1BCA0}', '\u{1BCA3}'), // shorthand format controls
    ('\u{1D173}', '\u{1D17A}'), // musical symbol format controls
    ('\u{E0001}', '\u{E0001}'), // language tag
    ('\u{E0020}', '\u{E007F}'), // tag characters
];

/// The token a WebSocket upgrade request carries.
///
/// `Authorization: Bearer <t>` (see [`bearer_token`]) wins; otherwise the
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

/// The credentials of an `Authorization` field value, if it is a bearer
/// token. The one rule both listeners (client upgrade and admin HTTP) use.
///
/// RFC 6750 §2.1: `Bearer 1*SP b64token`. The scheme is case-insensitive
/// (RFC 9110 §11.1); one or more spaces, and **only spaces**, separate it
/// from the token — a tab there is not a bearer credential (the grammar says
/// SP, and accepting what some proxies or servers refuse invites the two to
/// disagree on who is authenticated). Spaces and tabs around the whole value
/// are field whitespace and ignored. The token must be a b64token
/// (`A-Z a-z 0-9 - . _ ~ + /`, then any `=`), which every JWT is.
pub fn bearer_token(value: &str) -> Option<&str> {
    const SCHEME: &str = "bearer";
    let value = value.trim_matches([' ', '\t']);
    let scheme = value.get(..SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = value[SCHEME.len()..]
        .strip_prefix(' ')?
        .trim_start_matches(' ');
    is_b64token(token).then_some(token)
}

/// RFC 6750 §2.1 `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
