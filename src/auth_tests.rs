//! Tests of token mint/verify, bearer parsing, and secret-file loading and creation.

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
        let path = std::env::temp_dir().join(format!("pushgate-auth-{name}-{}", to_hex(&random)));
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
    let forged = b64(format!(r#"{{"sub":"mallory","iat":{NOW},"exp":{}}}"#, NOW + 60).as_bytes());
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
        scope: None,
    };
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &secret().encoding).unwrap();
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

#[test]
fn admin_tokens_need_the_admin_scope() {
    let secret = Secret::from_bytes(b"0123456789abcdef0123456789abcdef".to_vec());
    let now = 1_700_000_000;
    let admin = mint_admin(&secret, 60, now);
    assert_eq!(verify_admin(&secret, &admin, now), Ok(()));
    let user = mint(&secret, "alice", 60, now);
    assert_eq!(verify_admin(&secret, &user, now), Err(TokenError::NotAdmin));
    assert_eq!(
        verify_admin(&secret, &admin, now + 60),
        Err(TokenError::Expired)
    );
}
