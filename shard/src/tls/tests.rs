//! The shard's TLS part against a real rustls client, in memory: the
//! handshake (with and without budget), then records both ways, each
//! direction's bytes split at every offset.

use super::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig};
use std::io::{Read, Write};

fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = CertificateDer::from(made.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    server.enable_secret_extraction = true;
    server.send_tls13_tickets = 0;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

fn tls(server: Arc<ServerConfig>) -> (Tls, ConnId) {
    let mut tls = Tls::new(Some(TlsListeners {
        config: server,
        listeners: vec![0],
    }));
    let id = ConnId::for_tests(3, 1);
    tls.start(id);
    (tls, id)
}

fn client_out(client: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut out).unwrap();
    }
    out
}

fn client_in(client: &mut ClientConnection, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        client.read_tls(&mut bytes).unwrap();
        client.process_new_packets().unwrap();
    }
}

/// Runs the handshake; returns the client and what the server delivered
/// from `early` (application data the client sent with its Finished).
fn handshake(
    tls: &mut Tls,
    id: ConnId,
    client: Arc<ClientConfig>,
    early: &[u8],
) -> (ClientConnection, Vec<u8>) {
    let mut client =
        ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut delivered = Vec::new();
    let mut early_sent = false;
    for _ in 0..10 {
        if !client.is_handshaking() && !early_sent {
            client.writer().write_all(early).unwrap();
            early_sent = true;
        }
        let mut bytes = client_out(&mut client);
        let mut out = Vec::new();
        tls.new_round();
        match tls.input(id, &mut bytes, &mut out) {
            Input::Nothing => {}
            Input::Owned(v) => delivered.extend(v),
            Input::InPlace(n) => delivered.extend_from_slice(&bytes[..n]),
            Input::Ended { failure, .. } => panic!("ended: {failure:?}"),
        }
        client_in(&mut client, &out);
        if early_sent && (!delivered.is_empty() || early.is_empty()) {
            break;
        }
    }
    assert!(!client.is_handshaking());
    (client, delivered)
}

#[test]
fn handshake_then_records_both_ways() {
    let (server, client) = configs();
    let (mut tls, id) = tls(server);
    let (mut client, early) = handshake(&mut tls, id, client, b"GET /ws HTTP/1.1\r\n\r\n");
    assert_eq!(
        early, b"GET /ws HTTP/1.1\r\n\r\n",
        "data sent right after Finished"
    );

    // Server → client: sealed by the shard, read by rustls.
    let sealed = tls.seal(id, &[b"hello ", b"client"]).unwrap().unwrap();
    client_in(&mut client, &sealed);
    let mut got = vec![0; 12];
    client.reader().read_exact(&mut got).unwrap();
    assert_eq!(got, b"hello client");

    // Client → server, split at every offset (a fresh record pair each time).
    for cut in 0..60 {
        client.writer().write_all(b"ping from the client").unwrap();
        let wire = client_out(&mut client);
        let cut = cut.min(wire.len());
        let mut got = Vec::new();
        for part in [&wire[..cut], &wire[cut..]] {
            let mut part = part.to_vec();
            match tls.input(id, &mut part, &mut Vec::new()) {
                Input::Nothing => {}
                Input::InPlace(n) => got.extend_from_slice(&part[..n]),
                Input::Owned(v) => got.extend(v),
                Input::Ended { failure, .. } => panic!("{failure:?}"),
            }
        }
        assert_eq!(got, b"ping from the client", "cut at {cut}");
    }

    // The client's close_notify ends the session without a failure.
    client.send_close_notify();
    let mut wire = client_out(&mut client);
    match tls.input(id, &mut wire, &mut Vec::new()) {
        Input::Ended {
            failure: None,
            reply,
        } => assert!(!reply.is_empty(), "our close_notify"),
        _ => panic!("close_notify ends the session"),
    }
}

#[test]
fn a_client_hello_over_the_budget_waits_for_the_next_round() {
    let (server, client) = configs();
    let (mut tls, id) = tls(server);
    let mut client =
        ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut hello = client_out(&mut client);
    let mut out = Vec::new();
    tls.budget = 0;
    assert!(matches!(
        tls.input(id, &mut hello, &mut out),
        Input::Nothing
    ));
    assert!(out.is_empty(), "no flight computed without budget");
    assert!(tls.has_deferred());
    tls.new_round();
    for deferred in tls.take_deferred() {
        assert!(matches!(tls.resume(deferred, &mut out), Input::Nothing));
    }
    assert!(!out.is_empty(), "the server's flight, next round");
    client_in(&mut client, &out);
    assert!(!client.is_handshaking() || client.wants_write());
}

#[test]
fn plain_http_gets_a_400_and_garbage_an_alert() {
    let (server, _) = configs();
    let (mut tls, id) = tls(server.clone());
    let mut out = Vec::new();
    let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    match tls.input(id, &mut req, &mut out) {
        Input::Ended {
            failure: Some(why),
            reply,
        } => {
            assert!(why.contains("plain HTTP"), "{why}");
            assert!(reply.starts_with(b"HTTP/1.1 400"));
        }
        _ => panic!("refused"),
    }
    let (mut tls, id) = self::tls(server);
    let mut junk = vec![22, 3, 1, 0, 4, 1, 0, 0, 0];
    match tls.input(id, &mut junk, &mut out) {
        Input::Ended {
            failure: Some(_),
            reply,
        } => assert_eq!(reply.first(), Some(&21), "an alert"),
        _ => panic!("refused"),
    }
}

#[test]
fn handshake_input_is_bounded() {
    let (server, _) = configs();
    let (mut tls, id) = tls(server);
    // A record header announcing a long handshake record, then its start:
    // the bytes wait for the rest until the bound is passed.
    let mut first = vec![22, 3, 1, 0x40, 0x00];
    first.extend(vec![1u8; 4000]);
    assert!(matches!(
        tls.input(id, &mut first, &mut Vec::new()),
        Input::Nothing
    ));
    let mut more = vec![1u8; handshake::HANDSHAKE_INPUT_BYTES_MAX];
    assert!(matches!(
        tls.input(id, &mut more, &mut Vec::new()),
        Input::Ended {
            failure: Some(_),
            ..
        }
    ));
}

#[test]
fn a_silent_connection_holds_no_handshake_state() {
    let (server, _) = configs();
    let (tls, id) = tls(server);
    assert!(matches!(tls.conns.get(&id.index), Some(State::Accepted)));
}

#[test]
fn handshake_input_in_whole_records_is_bounded_too() {
    let (server, _) = configs();
    let (mut tls, id) = tls(server);
    // A ClientHello message announcing 60,000 bytes, sent in whole 1 KiB
    // records: each goes to rustls (which would buffer the fragments up to
    // 64 KiB), so nothing stays pending; the bound counts them all.
    let mut hello = vec![1u8, 0, 0xea, 0x60];
    hello.resize(60_004, 0);
    let mut fed = 0;
    for fragment in hello.chunks(1024) {
        let mut record = vec![22, 3, 1];
        record.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        record.extend_from_slice(fragment);
        fed += record.len();
        match tls.input(id, &mut record, &mut Vec::new()) {
            Input::Nothing => assert!(fed <= handshake::HANDSHAKE_INPUT_BYTES_MAX),
            Input::Ended {
                failure: Some(why), ..
            } => {
                assert!(why.contains("before the handshake ended"), "{why}");
                assert!(fed > handshake::HANDSHAKE_INPUT_BYTES_MAX);
                return;
            }
            _ => panic!("neither waiting nor refused"),
        }
    }
    panic!("{fed} bytes taken before the handshake ended");
}

#[test]
fn a_refused_record_gets_the_alert_that_says_why() {
    let (server, client) = configs();
    for (bytes, alert) in [
        (vec![23, 3, 3, 0x48, 0x01], 22), // record_overflow
        ([&[23u8, 3, 3, 0, 32][..], &[7; 32]].concat(), 20), // bad_record_mac
        (vec![21, 3, 3, 0, 2, 2, 40], 10), // unexpected_message
    ] {
        let (mut tls, id) = tls(server.clone());
        let (mut client, _) = handshake(&mut tls, id, client.clone(), b"");
        let mut bytes = bytes;
        match tls.input(id, &mut bytes, &mut Vec::new()) {
            Input::Ended {
                failure: Some(_),
                reply,
            } => {
                let mut reply = &reply[..];
                client.read_tls(&mut reply).unwrap();
                let err = client.process_new_packets().expect_err("a fatal alert");
                let want = rustls::AlertDescription::from(alert);
                assert_eq!(err, rustls::Error::AlertReceived(want));
            }
            _ => panic!("refused"),
        }
    }
}
