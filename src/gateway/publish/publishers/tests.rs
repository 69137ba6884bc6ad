//! The publishers part alone: bytes in, requests out; replies lined up in
//! request order.

use super::*;

fn conn(i: u32, gen: u32) -> ConnId {
    ConnId::for_tests(i, gen)
}

fn status(id: u64) -> Request {
    Request::Status { id }
}

fn frames(requests: &[Request]) -> Vec<u8> {
    requests.iter().flat_map(wire::encode_request).collect()
}

#[test]
fn requests_are_cut_out_of_a_stream_split_at_every_offset() {
    let bytes = frames(&[status(1), status(2), status(3)]);
    for cut in 0..=bytes.len() {
        let mut p = Publishers::new(1 << 20);
        p.open(conn(0, 1));
        let (a, b) = bytes.split_at(cut);
        let mut got = p.receive(conn(0, 1), a, 0).requests;
        got.extend(p.receive(conn(0, 1), b, 0).requests);
        assert_eq!(got, [status(1), status(2), status(3)], "cut {cut}");
        assert!(p.stalled(u64::MAX, 0).is_empty(), "nothing partial left");
    }
}

#[test]
fn a_frame_left_half_way_stalls_from_its_first_byte() {
    let mut p = Publishers::new(1 << 20);
    p.open(conn(0, 1));
    let bytes = frames(&[status(1)]);
    p.receive(conn(0, 1), &bytes[..3], 100);
    p.receive(conn(0, 1), &bytes[3..5], 900);
    assert!(p.stalled(1_099, 1_000).is_empty());
    assert_eq!(p.stalled(1_100, 1_000), [conn(0, 1)]);
    p.receive(conn(0, 1), &bytes[5..], 1_200);
    assert!(p.stalled(u64::MAX, 1_000).is_empty());
}

#[test]
fn a_broken_frame_refuses_after_the_requests_before_it() {
    let mut p = Publishers::new(64);
    p.open(conn(0, 1));
    let mut bytes = frames(&[status(1)]);
    bytes.extend([3, 0, 0, 0, 9, 9, 9]);
    let got = p.receive(conn(0, 1), &bytes, 0);
    assert_eq!(got.requests, [status(1)]);
    assert!(got.refuse.unwrap().contains("bad push frame"));
    let got = p.receive(conn(0, 1), &[100, 0, 0, 0], 0);
    assert!(
        got.refuse.unwrap().contains("exceeds"),
        "over the frame limit"
    );
}

#[test]
fn past_the_in_flight_bound_one_refusal_is_given() {
    let mut p = Publishers::new(1 << 20);
    p.open(conn(0, 1));
    for t in 0..OUTSTANDING_MAX as u64 {
        p.expect(conn(0, 1), t + 1);
    }
    let got = p.receive(conn(0, 1), &frames(&[status(1), status(2)]), 0);
    assert!(got.requests.is_empty());
    assert!(got.refuse.unwrap().contains("in flight"));
}

#[test]
fn replies_leave_in_request_order_and_a_close_names_the_waiting_tickets() {
    let mut p = Publishers::new(1 << 20);
    let c = conn(0, 1);
    p.open(c);
    p.expect(c, 10);
    p.reply(c, b"second".to_vec(), 0);
    p.expect(c, 11);
    assert_eq!(p.ready_front(c, 0), None, "the first still waits");
    p.fill(c, 10, b"first".to_vec(), 0);
    assert_eq!(p.ready_front(c, 0).as_deref(), Some(&b"first"[..]));
    p.pop_front(c);
    assert_eq!(p.ready_front(c, 0).as_deref(), Some(&b"second"[..]));
    p.pop_front(c);
    assert_eq!(p.outstanding(c), 1);
    assert_eq!(p.close(c), Some(vec![11]));
    assert_eq!(p.close(c), None);
}

#[test]
fn a_new_connection_in_the_same_slot_is_another_publisher() {
    let mut p = Publishers::new(1 << 20);
    p.open(conn(3, 1));
    p.expect(conn(3, 1), 5);
    p.close(conn(3, 1));
    p.open(conn(3, 2));
    p.fill(conn(3, 1), 5, b"stale".to_vec(), 0);
    assert_eq!(p.outstanding(conn(3, 2)), 0);
    assert!(!p.contains(conn(3, 1)));
}

// Tables that give memory back.

fn conn1(i: u32) -> ConnId {
    ConnId::for_tests(i, 1)
}

#[test]
fn memory_comes_back_after_many_publishers_and_a_burst_of_requests() {
    let mut p = Publishers::new(1 << 20);
    for i in 0..2048 {
        p.open(conn1(i));
    }
    let flooded = p.conns.capacity();
    for i in 1..2048 {
        assert!(p.close(conn1(i)).is_some());
    }
    p.shrink_if_sparse();
    assert!(p.conns.capacity() < flooded / 8, "{}", p.conns.capacity());
    assert!(p.contains(conn1(0)));
    // A burst of pipelined requests, answered: the queue's room goes too.
    for ticket in 0..OUTSTANDING_MAX as u64 {
        p.expect(conn1(0), ticket);
    }
    assert_eq!(p.outstanding(conn1(0)), OUTSTANDING_MAX);
    for ticket in 0..OUTSTANDING_MAX as u64 {
        p.fill(conn1(0), ticket, vec![1], 0);
        assert_eq!(p.ready_front(conn1(0), 0).as_deref(), Some(&[1u8][..]));
        p.pop_front(conn1(0));
    }
    assert_eq!(p.outstanding(conn1(0)), 0);
    assert!(p.conns[&conn1(0)].outstanding.capacity() <= OUTSTANDING_KEPT_MAX);
}

#[test]
fn a_publisher_that_stopped_reading_drops_bytes_and_closes_once_answered() {
    let mut p = Publishers::new(1 << 20);
    let (a, b) = (conn(0, 1), conn(1, 1));
    p.open(a);
    p.open(b);
    assert_eq!(p.receive(a, &frames(&[status(1)]), 0).requests, [status(1)]);
    p.expect(a, 7);
    p.stop_reading_all();
    assert!(p.receive(a, &frames(&[status(2)]), 0).requests.is_empty());
    assert_eq!(p.closable(), [b], "a still owes request 1");
    p.fill(a, 7, b"reply".to_vec(), 0);
    p.pop_front(a);
    let mut closable = p.closable();
    closable.sort_by_key(|c| c.index());
    assert_eq!(closable, [a, b]);
}

#[test]
fn a_reply_waits_until_the_forwarded_pushes_before_it_are_acknowledged() {
    let mut p = Publishers::new(1 << 20);
    let c = conn(0, 1);
    p.open(c);
    p.expect(c, 10);
    p.fill(c, 10, b"pushed".to_vec(), 3);
    p.reply(c, b"status".to_vec(), 0);
    assert_eq!(
        p.ready_front(c, 2),
        None,
        "push 3 is not the successor's yet"
    );
    assert_eq!(p.ready_front(c, 3).as_deref(), Some(&b"pushed"[..]));
    p.pop_front(c);
    // Order is kept: an ungated reply behind it went only after it.
    assert_eq!(p.ready_front(c, 0).as_deref(), Some(&b"status"[..]));
}
