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
        aud: CLIENT_AUDIENCE,
        iat: NOW,
        exp: NOW + 60,
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
        TokenError::NotYetValid,
        TokenError::CriticalHeader,
        TokenError::BadSubject,
        TokenError::NotClient,
        TokenError::NotAdmin,
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
    // RFC 6750: `Bearer` 1*SP token. A tab is not a separator (it used to
    // be here, but not on the admin listener).
    assert_eq!(token_from_request(Some("Bearer\tabc"), None), None);
    assert_eq!(
        token_from_request(Some("Bearer\tabc"), Some("def")),
        Some("def")
    );
    assert_eq!(token_from_request(Some(" Bearer abc\t"), None), Some("abc"));
    // The token must be a b64token.
    assert_eq!(token_from_request(Some("Bearer a b"), None), None);
    assert_eq!(token_from_request(Some("Bearer a\u{200b}b"), None), None);
    assert_eq!(
        token_from_request(Some("Bearer aZ09-._~+/=="), None),
        Some("aZ09-._~+/==")
    );
    assert_eq!(token_from_request(Some("Bearer =="), None), None);
    assert_eq!(token_from_request(Some("Beare"), None), None);
    assert_eq!(token_from_request(Some("Bearé abc"), None), None);
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
    let explicit = Secret::load_or_create(&run_dir, Some(&path)).unwrap();
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
    assert!(!mode_is_writable_by_others(0o100644));
    assert!(!mode_is_writable_by_others(0o040755));
    assert!(mode_is_writable_by_others(0o100620));
    assert!(mode_is_writable_by_others(0o041777));
}

#[test]
fn hex() {
    assert_eq!(to_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
}

/// As root, hands `path` to `nobody` (65534); false (the test then skips)
/// for anyone else, who cannot give a file away.
fn give_to_nobody(path: &Path) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: only root can make a file owned by another user");
        return false;
    }
    std::os::unix::fs::chown(path, Some(65_534), Some(65_534)).unwrap();
    true
}

/// Issue 10: a `<run-dir>/secret` that someone else placed (their uid, mode
/// 0644, content they know) used to be accepted with a warning, and tokens
/// minted from it passed the admin API.
#[test]
fn generated_secret_owned_by_someone_else_refused() {
    let tmp = TempDir::new("planted");
    let path = tmp.0.join(SECRET_FILE_NAME);
    fs::write(&path, "k".repeat(64)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    if !give_to_nobody(&path) {
        return;
    }
    let err = Secret::load_or_create(&tmp.0, None).unwrap_err();
    assert!(
        matches!(
            err,
            AuthError::GeneratedSecretNotOwned { owner: 65_534, .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("delete it"), "{err}");
    // The same file named with --secret-file: refused too (nobody is
    // neither this user nor root).
    let err = Secret::load_or_create(&tmp.0, Some(&path)).unwrap_err();
    assert!(
        matches!(err, AuthError::SecretFileNotOwned { owner: 65_534, .. }),
        "{err}"
    );
    // Minting (`pushgate token`) may read another user's --secret-file: the
    // server that verifies checks the owner. The generated one stays refused.
    let key = tmp.0.join("service-key");
    fs::write(&key, "s".repeat(64)).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    assert!(give_to_nobody(&key));
    Secret::load_to_mint(&tmp.0, Some(&key)).unwrap();
    assert!(matches!(
        Secret::load_to_mint(&tmp.0, None).unwrap_err(),
        AuthError::GeneratedSecretNotOwned { .. }
    ));
}

#[test]
fn secret_files_writable_by_others_refused_readable_ones_used() {
    let tmp = TempDir::new("writable");
    let generated = tmp.0.join(SECRET_FILE_NAME);
    fs::write(&generated, "k".repeat(64)).unwrap();
    let operator = tmp.0.join("key");
    fs::write(&operator, "o".repeat(64)).unwrap();
    for mode in [0o620, 0o602, 0o666] {
        for (path, explicit) in [(&generated, None), (&operator, Some(operator.as_path()))] {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
            let err = Secret::load_or_create(&tmp.0, explicit).unwrap_err();
            assert!(
                matches!(err, AuthError::SecretFileWritableByOthers { .. }),
                "{mode:o} {err}"
            );
            assert!(err.to_string().contains("chmod go-w"), "{err}");
        }
    }
    // Group-readable (backends that mint their own tokens): used, with a warning.
    for path in [&generated, &operator] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o640)).unwrap();
    }
    Secret::load_or_create(&tmp.0, None).unwrap();
    Secret::load_or_create(&tmp.0, Some(&operator)).unwrap();
}

/// Issue 10: the run directory holds the push sockets too, so it is checked
/// whether or not `--secret-file` is given (it used to be skipped then).
#[test]
fn run_dir_writable_by_others_refused_with_or_without_secret_file() {
    let tmp = TempDir::new("loose-dir");
    let key = tmp.0.join("key");
    fs::write(&key, "k".repeat(64)).unwrap();
    let run_dir = tmp.0.join("run");
    fs::create_dir(&run_dir).unwrap();
    for mode in [0o777, 0o770, 0o1777, 0o722] {
        fs::set_permissions(&run_dir, fs::Permissions::from_mode(mode)).unwrap();
        for secret_file in [None, Some(key.as_path())] {
            let err = Secret::load_or_create(&run_dir, secret_file).unwrap_err();
            assert!(
                matches!(err, AuthError::RunDirWritableByOthers { .. }),
                "{mode:o} {err}"
            );
            assert!(err.to_string().contains("chmod go-w"), "{err}");
        }
    }
    // Readable and searchable by others is fine (systemd's
    // RuntimeDirectoryMode=0750 / 0755).
    fs::set_permissions(&run_dir, fs::Permissions::from_mode(0o755)).unwrap();
    Secret::load_or_create(&run_dir, Some(&key)).unwrap();
    // --secret-file still creates a missing run dir (the sockets need it).
    let fresh = tmp.0.join("fresh");
    Secret::load_or_create(&fresh, Some(&key)).unwrap();
    assert!(fresh.is_dir());
    assert!(!fresh.join(SECRET_FILE_NAME).exists());

    // Owned by someone else: refused with --secret-file too.
    let theirs = tmp.0.join("theirs");
    fs::create_dir(&theirs).unwrap();
    if give_to_nobody(&theirs) {
        let err = Secret::load_or_create(&theirs, Some(&key)).unwrap_err();
        assert!(matches!(err, AuthError::RunDirNotOwned { .. }), "{err}");
    }
}

#[test]
fn admin_and_client_tokens_have_separate_audiences() {
    let admin = mint_admin(&secret(), 60, NOW);
    assert_eq!(verify_admin(&secret(), &admin, NOW), Ok(()));
    // Issue 10: an admin token used to work as a client token for "admin".
    assert_eq!(verify(&secret(), &admin, NOW), Err(TokenError::NotClient));
    let user = mint(&secret(), "alice", 60, NOW);
    assert_eq!(verify(&secret(), &user, NOW), Ok("alice".into()));
    assert_eq!(
        verify_admin(&secret(), &user, NOW),
        Err(TokenError::NotAdmin)
    );
    assert_eq!(
        verify_admin(&secret(), &admin, NOW + 60),
        Err(TokenError::Expired)
    );

    let exp = NOW + 60;
    // The documented client token a backend mints: HS256, sub, exp, nothing else.
    let minimal = signed(&format!(r#"{{"sub":"bob","exp":{exp}}}"#));
    assert_eq!(verify(&secret(), &minimal, NOW), Ok("bob".into()));
    assert_eq!(
        verify_admin(&secret(), &minimal, NOW),
        Err(TokenError::NotAdmin)
    );
    // An admin token from before audiences (scope only): neither.
    let legacy = signed(&format!(r#"{{"sub":"admin","scope":"admin","exp":{exp}}}"#));
    assert_eq!(verify(&secret(), &legacy, NOW), Err(TokenError::NotClient));
    assert_eq!(
        verify_admin(&secret(), &legacy, NOW),
        Err(TokenError::NotAdmin)
    );
    for (aud, client, admin) in [
        (r#""pushgate-client""#, true, false),
        (r#"["pushgate-client","other"]"#, true, false),
        (r#""pushgate-admin""#, false, true),
        (r#"["pushgate-admin"]"#, false, true),
        (r#"["pushgate-client","pushgate-admin"]"#, false, false),
        (r#""other-service""#, false, false),
        (r#"[]"#, false, false),
    ] {
        let token = signed(&format!(r#"{{"sub":"carol","aud":{aud},"exp":{exp}}}"#));
        assert_eq!(verify(&secret(), &token, NOW).is_ok(), client, "{aud}");
        assert_eq!(verify_admin(&secret(), &token, NOW).is_ok(), admin, "{aud}");
    }
    let token = signed(&format!(r#"{{"sub":"carol","aud":7,"exp":{exp}}}"#));
    assert_eq!(verify(&secret(), &token, NOW), Err(TokenError::Malformed));
}

#[test]
fn nbf_is_honoured_with_the_exp_leeway() {
    let exp = NOW + 600;
    let token = signed(&format!(
        r#"{{"sub":"alice","nbf":{},"exp":{exp}}}"#,
        NOW + 10
    ));
    assert_eq!(verify(&secret(), &token, NOW), Err(TokenError::NotYetValid));
    assert_eq!(
        verify(&secret(), &token, NOW + 9),
        Err(TokenError::NotYetValid)
    );
    assert_eq!(verify(&secret(), &token, NOW + 10), Ok("alice".into()));
    let admin = signed(&format!(
        r#"{{"sub":"admin","aud":"pushgate-admin","nbf":{},"exp":{exp}}}"#,
        NOW + 10
    ));
    assert_eq!(
        verify_admin(&secret(), &admin, NOW),
        Err(TokenError::NotYetValid)
    );
    assert_eq!(verify_admin(&secret(), &admin, NOW + 10), Ok(()));
    for bad in [r#""soon""#, "-1", "1.5"] {
        let token = signed(&format!(r#"{{"sub":"alice","nbf":{bad},"exp":{exp}}}"#));
        assert_eq!(
            verify(&secret(), &token, NOW),
            Err(TokenError::Malformed),
            "{bad}"
        );
    }
}

/// Signs `claims_json` with the test secret under a hand-written header
/// (jsonwebtoken's `encode` would write its own header, without `crit`).
fn signed_with_header(header_json: &str, claims_json: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        b64(header_json.as_bytes()),
        b64(claims_json.as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &secret().encoding,
        Algorithm::HS256,
    )
    .unwrap();
    format!("{signing_input}.{signature}")
}

#[test]
fn crit_header_is_refused() {
    let claims = format!(r#"{{"sub":"alice","exp":{}}}"#, NOW + 60);
    let plain = signed_with_header(r#"{"alg":"HS256","typ":"JWT"}"#, &claims);
    assert_eq!(verify(&secret(), &plain, NOW), Ok("alice".into()));
    for header in [
        r#"{"alg":"HS256","crit":["exp"]}"#,
        r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
        r#"{"alg":"HS256","crit":[]}"#,
        r#"{"alg":"HS256","crit":null}"#,
        r#"{"crit":["x"],"alg":"HS256","typ":"JWT"}"#,
    ] {
        let token = signed_with_header(header, &claims);
        assert_eq!(
            verify(&secret(), &token, NOW),
            Err(TokenError::CriticalHeader),
            "{header}"
        );
        let admin = signed_with_header(
            header,
            &format!(
                r#"{{"sub":"admin","aud":"pushgate-admin","exp":{}}}"#,
                NOW + 60
            ),
        );
        assert_eq!(
            verify_admin(&secret(), &admin, NOW),
            Err(TokenError::CriticalHeader),
            "{header}"
        );
    }
}

#[test]
fn user_ids_that_spoof_or_break_lines_are_refused() {
    for good in [
        "alice",
        "bob@example.com",
        "ユーザー",
        "ali ce",
        "Zoë",
        "עברית",
        "مستخدم",
        "😀",
        "user:42/ü",
        "\u{3000}wide",
    ] {
        assert_eq!(check_user_id(good), Ok(()), "{good:?}");
    }
    for bad in [
        "",
        "a\u{0}",
        "a\tb",
        "a\nb",
        "a\u{7f}",
        "a\u{85}b",        // C1 NEL
        "a\u{9b}b",        // C1 CSI
        "ad\u{202e}nimda", // right-to-left override
        "a\u{202a}",
        "a\u{202b}",
        "a\u{202c}",
        "a\u{202d}",
        "a\u{2066}",
        "a\u{2067}",
        "a\u{2068}",
        "a\u{2069}",
        "a\u{200e}",
        "a\u{200f}",
        "a\u{061c}",
        "ad\u{200b}min",
        "a\u{200c}",
        "a\u{200d}",
        "a\u{2060}",
        "\u{feff}admin",
        "a\u{2028}b",
        "a\u{2029}b",
        "ad\u{ad}min", // soft hyphen
        "a\u{e0041}",  // tag character
        "a\u{180e}",
    ] {
        assert_eq!(check_user_id(bad), Err(TokenError::BadSubject), "{bad:?}");
    }
    // The bound is bytes: 64 four-byte characters fit, one more byte does not.
    assert_eq!(check_user_id(&"😀".repeat(64)), Ok(()));
    assert_eq!(
        check_user_id(&format!("{}a", "😀".repeat(64))),
        Err(TokenError::BadSubject)
    );
    // And a token carrying one is refused.
    let token = signed(&format!(r#"{{"sub":"ad\u202enimda","exp":{}}}"#, NOW + 60));
    assert_eq!(verify(&secret(), &token, NOW), Err(TokenError::BadSubject));
}

#[test]
fn format_char_table_is_sorted_and_disjoint() {
    for pair in FORMAT_CHARS.windows(2) {
        assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
    }
    for c in ['a', ' ', '\u{3000}', '\u{e000}', '😀'] {
        assert!(!is_forbidden_in_user_id(c), "{c:?}");
    }
}
